//! Random packet loss for impairment tests: drops a share of video RTP between the
//! network and the NACK interceptors, in both directions, so retransmission has
//! something to recover.

use std::sync::Arc;

use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};

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

struct DroppingReader {
    rate: f64,
    inner: Arc<dyn RTPReader + Send + Sync>,
}

#[async_trait::async_trait]
impl RTPReader for DroppingReader {
    async fn read(
        &self,
        buf: &mut [u8],
        attributes: &Attributes,
    ) -> Result<(webrtc::rtp::packet::Packet, Attributes), webrtc::interceptor::Error> {
        loop {
            let got = self.inner.read(buf, attributes).await?;
            if !lose(self.rate) {
                return Ok(got);
            }
        }
    }
}

struct DroppingWriter {
    rate: f64,
    inner: Arc<dyn RTPWriter + Send + Sync>,
}

#[async_trait::async_trait]
impl RTPWriter for DroppingWriter {
    async fn write(&self, pkt: &webrtc::rtp::packet::Packet, attributes: &Attributes) -> Result<usize, webrtc::interceptor::Error> {
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

    async fn bind_local_stream(&self, info: &StreamInfo, writer: Arc<dyn RTPWriter + Send + Sync>) -> Arc<dyn RTPWriter + Send + Sync> {
        if info.mime_type.to_ascii_lowercase().starts_with("video/") {
            Arc::new(DroppingWriter { rate: self.rate, inner: writer })
        } else {
            writer
        }
    }

    async fn unbind_local_stream(&self, _info: &StreamInfo) {}

    async fn bind_remote_stream(&self, info: &StreamInfo, reader: Arc<dyn RTPReader + Send + Sync>) -> Arc<dyn RTPReader + Send + Sync> {
        if info.mime_type.to_ascii_lowercase().starts_with("video/") {
            Arc::new(DroppingReader { rate: self.rate, inner: reader })
        } else {
            reader
        }
    }

    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}

    async fn close(&self) -> Result<(), webrtc::interceptor::Error> {
        Ok(())
    }
}
