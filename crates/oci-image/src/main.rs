//! `oci-image --name switchboard/operator --tag 0.1.0 --out DIR [--port 8080/tcp]
//!   [--env K=V] [--label K=V] [--host-program /usr/bin/ffmpeg] [--bin-dir /usr/local/bin] [BINARY...]`
//! writes an OCI image layout to DIR and prints its manifest digest.
//!
//! Each BINARY goes to `--bin-dir` (default `/usr/local/bin`; `/` for `/pause`), each
//! `--host-program` to its host path; either kind brings the libraries `ldd` finds (a
//! static binary brings none). The entrypoint is the first BINARY, else the first host program.

use std::path::PathBuf;

use anyhow::{Context, bail};
use switchboard_oci_image::{ImageSpec, build};

fn main() -> anyhow::Result<()> {
    let mut spec = ImageSpec::default();
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--name" => spec.name = value()?,
            "--tag" => spec.tag = value()?,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--port" => spec.exposed_ports.push(value()?),
            "--host-program" => spec.host_programs.push(PathBuf::from(value()?)),
            "--bin-dir" => spec.bin_dir = Some(value()?),
            "--env" | "--label" => {
                let v = value()?;
                let (k, val) = v.split_once('=').with_context(|| format!("{arg} takes K=V, got {v}"))?;
                if arg == "--env" {
                    spec.env.push((k.into(), val.into()));
                } else {
                    spec.labels.insert(k.into(), val.into());
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: oci-image --name NAME --tag TAG --out DIR [--port P/tcp] [--env K=V] [--label K=V] [--host-program PATH] [--bin-dir DIR] [BINARY...]"
                );
                return Ok(());
            }
            flag if flag.starts_with("--") => bail!("unknown option {flag}"),
            binary => spec.binaries.push(PathBuf::from(binary)),
        }
    }
    let out = out.context("--out DIR is required")?;
    if spec.name.is_empty() || spec.tag.is_empty() {
        bail!("--name and --tag are required");
    }
    let built = build(&spec, &out)?;
    println!(
        "{} {}:{} {} ({} files, {} bytes compressed)",
        out.display(),
        spec.name,
        spec.tag,
        built.manifest_digest,
        built.layer_files,
        built.layer_bytes
    );
    Ok(())
}
