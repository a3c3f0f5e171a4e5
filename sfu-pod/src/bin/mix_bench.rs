//! mix-bench: what one room of many listeners and a few talkers costs the SFU, its
//! audio mixed (`RoomAudio::Mixed`) or routed (the loudest 3 forwarded), side by side.
//!
//! It runs the SFU's own decision core (`sfu-core`'s `Room`, as the pod does) and, when
//! mixed, the mixer's codec work as the pod's mixer does it (libopus decoding of each
//! voice in the mix, `mix_frames`, one encode of the whole mix and one of each talker's
//! mix without its voice), on a simulated 20 ms clock as fast as the CPU allows, and
//! counts the packets the core forwards. Left out, the same per packet in both modes:
//! SRTP and the UDP send of each forwarded packet, which `sfu-bench` measures (its
//! "pkt/s per core"); the table turns the forwarded rate into cores with that figure
//! (`--send-pps-per-core`).
//!
//!     cargo build --release -p sfu-pod
//!     target/release/mix-bench --listeners 1000 --talkers 3 --seconds 10

use std::time::{Duration, Instant};

use sfu_pod::sfu::mixer::{self, FRAME, Voice};
use switchboard_sfu_core::{
    AudioPolicy, Codec, Declaration, Input, Output, ParticipantKind, Room, RtpMeta, Source, TrackInfo,
};

struct Args {
    listeners: usize,
    talkers: usize,
    seconds: u64,
    send_pps_per_core: f64,
}

/// One second of a sine at `hz`, encoded as the talkers' clients would: 20 ms Opus frames.
fn tone_packets(hz: f32) -> Vec<Vec<u8>> {
    let mut encoder = mixer::encoder().expect("an opus encoder");
    (0..50)
        .map(|f| {
            let pcm: Vec<i16> = (0..FRAME)
                .map(|i| {
                    let t = (f * FRAME + i) as f32 / 48_000.0;
                    ((2.0 * std::f32::consts::PI * hz * t).sin() * 8_000.0) as i16
                })
                .collect();
            encoder.encode_vec(&pcm, 400).expect("a tone encodes")
        })
        .collect()
}

/// Polls the room until its deadline, counting forwards.
fn drain(room: &mut Room, forwarded: &mut u64) -> Instant {
    loop {
        match room.poll_output() {
            Output::Timeout(at) => return at,
            Output::Forward(_) => *forwarded += 1,
            _ => {}
        }
    }
}

struct Run {
    forwarded: u64,
    core_seconds: f64,
    codec_seconds: f64,
    simulated: f64,
}

fn run(args: &Args, mixed: bool) -> Run {
    let start = Instant::now();
    let policy = if mixed { AudioPolicy::mixed(3) } else { AudioPolicy::default() };
    let mut room = Room::with_audio_policy(start, policy);
    let mix = mixed.then(|| mixer::publish(&mut room, 3));
    let join = |room: &mut Room, id: &str, tracks: &[Declaration]| {
        let join = Input::Join {
            participant: id,
            kind: ParticipantKind::Client,
            auto_subscribe: true,
            may_publish: true,
            tracks,
        };
        room.handle_input(join).expect("joins");
    };
    let mut talkers = Vec::new();
    for t in 0..args.talkers {
        let id = format!("talker{t}");
        let mic = format!("{id}-mic");
        join(&mut room, &id, &[Declaration { id: mic.clone(), source: Source::Microphone, muted: false }]);
        let info = TrackInfo { id: mic, codec: Codec::Opus, source: Source::Microphone, origin: None };
        let h = room.handle_input(Input::Publish { participant: &id, info }).unwrap().track().unwrap();
        room.handle_input(Input::AddLayer { track: h, rid: "" }).unwrap();
        talkers.push((h, tone_packets(300.0 + 250.0 * t as f32)));
    }
    for l in 0..args.listeners {
        join(&mut room, &format!("listener{l}"), &[]);
    }
    let mut forwarded = 0u64;
    let mut deadline = drain(&mut room, &mut 0);
    let mut voices: Vec<Option<Voice>> = (0..3).map(|_| None).collect();
    let mut encoders: Vec<Option<opus::Encoder>> = (0..4).map(|_| mixer::encoder()).collect();
    let frames = args.seconds * 50;
    let (mut core_time, mut codec_time) = (Duration::ZERO, Duration::ZERO);
    for f in 0..frames {
        let now = start + Duration::from_millis(20 * f);
        let seq = f as u16;
        let ts = (f as u32).wrapping_mul(FRAME as u32);
        for (h, packets) in &talkers {
            let payload = &packets[f as usize % packets.len()];
            let t0 = Instant::now();
            let packet = RtpMeta { seq, ts, payload, size: payload.len() + 12, audio_level: Some(30) };
            room.handle_input(Input::Rtp { track: *h, layer: 0, packet, now }).unwrap();
            let due = drain(&mut room, &mut forwarded);
            let in_mix = mix.is_some() && room.mix_slot_of(*h).is_some();
            core_time += t0.elapsed();
            deadline = deadline.min(due);
            if in_mix {
                let t0 = Instant::now();
                let slot = room.mix_slot_of(*h).unwrap();
                let voice = voices[slot].get_or_insert_with(|| Voice::new(*h).unwrap());
                voice.decode(payload);
                codec_time += t0.elapsed();
            }
        }
        if let Some(mix) = mix {
            // The mixer's 20 ms, as the pod's does it.
            let t0 = Instant::now();
            let slots = room.mix_slots();
            let frames: Vec<Option<Vec<i16>>> =
                voices.iter_mut().map(|v| v.as_mut().and_then(|v| v.frames.pop_front())).collect();
            let (all, minus) = mixer::mix_frames(&frames);
            let mut layers = vec![(0usize, all)];
            for (k, m) in minus.into_iter().enumerate() {
                if let (Some(m), Some(Some((_, true)))) = (m, slots.get(k)) {
                    layers.push((k + 1, m));
                }
            }
            let encoded: Vec<(usize, Vec<u8>)> = layers
                .into_iter()
                .map(|(layer, pcm)| (layer, encoders[layer].as_mut().unwrap().encode_vec(&pcm, 400).unwrap()))
                .collect();
            codec_time += t0.elapsed();
            let t0 = Instant::now();
            for (layer, payload) in &encoded {
                let packet = RtpMeta { seq, ts, payload, size: payload.len() + 12, audio_level: None };
                room.handle_input(Input::Rtp { track: mix, layer: *layer, packet, now }).unwrap();
                deadline = deadline.min(drain(&mut room, &mut forwarded));
            }
            core_time += t0.elapsed();
        }
        if now >= deadline {
            let t0 = Instant::now();
            room.handle_input(Input::Timeout(now)).unwrap();
            deadline = drain(&mut room, &mut forwarded);
            core_time += t0.elapsed();
        }
    }
    Run {
        forwarded,
        core_seconds: core_time.as_secs_f64(),
        codec_seconds: codec_time.as_secs_f64(),
        simulated: frames as f64 / 50.0,
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args { listeners: 1000, talkers: 3, seconds: 10, send_pps_per_core: 27_000.0 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<f64> {
            it.next().and_then(|v| v.parse().ok()).ok_or_else(|| anyhow::anyhow!("{name} takes a number"))
        };
        match a.as_str() {
            "--listeners" => args.listeners = value("--listeners")? as usize,
            "--talkers" => args.talkers = (value("--talkers")? as usize).max(1),
            "--seconds" => args.seconds = (value("--seconds")? as u64).max(1),
            "--send-pps-per-core" => args.send_pps_per_core = value("--send-pps-per-core")?,
            other => anyhow::bail!("unknown argument {other}; see the doc comment of mix_bench.rs"),
        }
    }
    println!(
        "one room: {} listeners, {} talkers, {} s of audio; sends at {:.0} pkt/s per core",
        args.listeners, args.talkers, args.seconds, args.send_pps_per_core
    );
    println!();
    println!(
        "| audio | packets forwarded per s | per listener | decisions (cores) | codec (cores) | sends, estimated (cores) | total (cores) | per 1,000 listeners (cores) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for mixed in [false, true] {
        let r = run(&args, mixed);
        let pps = r.forwarded as f64 / r.simulated;
        let decisions = r.core_seconds / r.simulated;
        let codec = r.codec_seconds / r.simulated;
        let sends = pps / args.send_pps_per_core;
        let total = decisions + codec + sends;
        println!(
            "| {} | {:.0} | {:.1} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} |",
            if mixed { "mixed (3 voices)" } else { "routed (loudest 3)" },
            pps,
            pps / (args.listeners + args.talkers) as f64,
            decisions,
            codec,
            sends,
            total,
            total * 1000.0 / args.listeners as f64
        );
    }
    Ok(())
}
