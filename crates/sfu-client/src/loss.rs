//! Random packet loss for impairment tests, where a real network would lose packets:
//! outgoing video RTP is dropped below the NACK responder (it keeps its copy), incoming
//! video is dropped at the socket, before SRTP ([`LossyConn`]).

use std::sync::Arc;

use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter};

use std::sync::atomic::{AtomicU64, Ordering};

/// Packets dropped by every loss interceptor in this process.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

pub struct LossInterceptorBuilder {
    pub rate: f64,
}

impl InterceptorBuilder for LossInterceptorBuilder {
    fn build(&self, _id: &str) -> Result<Arc<dyn Interceptor + Send + Sync>, webrtc::interceptor::Error> {
        Ok(Arc::new(LossInterceptor { rate: self.rate }))
    }
}

struct LossInterceptor {
    rate: f64,
}

fn lose(rate: f64) -> bool {
    let lost = rand::random::<f64>() < rate;
    if lost {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    lost
}

struct DroppingWriter {
    rate: f64,
    inner: Arc<dyn RTPWriter + Send + Sync>,
}

#[async_trait::async_trait]
impl RTPWriter for DroppingWriter {
    async fn write(
        &self,
        pkt: &webrtc::rtp::packet::Packet,
        attributes: &Attributes,
    ) -> Result<usize, webrtc::interceptor::Error> {
        if lose(self.rate) {
            // Pretend it left: the sender's NACK buffer already holds it.
            return Ok(pkt.payload.len());
        }
        self.inner.write(pkt, attributes).await
    }
}

#[async_trait::async_trait]
impl Interceptor for LossInterceptor {
    async fn bind_rtcp_reader(&self, reader: Arc<dyn RTCPReader + Send + Sync>) -> Arc<dyn RTCPReader + Send + Sync> {
        reader
    }

    async fn bind_rtcp_writer(&self, writer: Arc<dyn RTCPWriter + Send + Sync>) -> Arc<dyn RTCPWriter + Send + Sync> {
        writer
    }

    async fn bind_local_stream(
        &self,
        info: &StreamInfo,
        writer: Arc<dyn RTPWriter + Send + Sync>,
    ) -> Arc<dyn RTPWriter + Send + Sync> {
        if info.mime_type.to_ascii_lowercase().starts_with("video/") {
            Arc::new(DroppingWriter { rate: self.rate, inner: writer })
        } else {
            writer
        }
    }

    async fn unbind_local_stream(&self, _info: &StreamInfo) {}

    async fn bind_remote_stream(
        &self,
        _info: &StreamInfo,
        reader: Arc<dyn RTPReader + Send + Sync>,
    ) -> Arc<dyn RTPReader + Send + Sync> {
        reader
    }

    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}

    async fn close(&self) -> Result<(), webrtc::interceptor::Error> {
        Ok(())
    }
}

/// A UDP socket that loses a share of the incoming video RTP, as a lossy network would:
/// before SRTP, so a retransmission is new to the receiver (an interceptor, sitting
/// after decryption, would make SRTP replay protection discard it).
pub struct LossyConn {
    socket: tokio::net::UdpSocket,
    rate: f64,
}

impl LossyConn {
    pub async fn bind(addr: std::net::SocketAddr, rate: f64) -> std::io::Result<Self> {
        Ok(Self { socket: tokio::net::UdpSocket::bind(addr).await?, rate })
    }

    /// SRTP leaves the RTP header in the clear: video is payload type 96, 98 or 102.
    fn is_video_rtp(packet: &[u8]) -> bool {
        packet.len() >= 12 && (128..=191).contains(&packet[0]) && matches!(packet[1] & 0x7f, 96 | 98 | 102)
    }
}

#[async_trait::async_trait]
impl webrtc::util::Conn for LossyConn {
    async fn connect(&self, addr: std::net::SocketAddr) -> webrtc::util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc::util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, std::net::SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            if Self::is_video_rtp(&buf[..n]) && lose(self.rate) {
                continue;
            }
            return Ok((n, from));
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc::util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: std::net::SocketAddr) -> webrtc::util::Result<usize> {
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc::util::Result<std::net::SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc::util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
