//! One push client per collector: connects (plain or mutual TLS), streams batches from the
//! spool, advances the spool cursor on each acknowledgement, and reconnects with backoff
//! from the first unacknowledged event whenever anything goes wrong.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use minerwatch_proto::{
    transport::TlsFiles,
    v1::{CollectorStatus, Node, PushRequest, collector_service_client::CollectorServiceClient},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::spool::{Reader, SpoolError};

/// Events per batch, and about how many bytes.
const BATCH_EVENTS: usize = 2000;
const BATCH_BYTES: usize = 1 << 20;
/// Batches sent and not yet acknowledged.
const IN_FLIGHT: usize = 4;
/// A collector that acknowledges nothing for this long while batches wait is given up on.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Largest message either side accepts (a batch is at most ~1 MiB plus one event).
pub const MAX_MESSAGE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("bad collector URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("collector said: {0}")]
    Status(#[from] tonic::Status),
    #[error("collector closed the stream")]
    Closed,
    #[error("no acknowledgement for {0:?}")]
    AckTimeout(Duration),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Checks a collector URL and builds its endpoint: `http://` is plaintext, `https://` mutual
/// TLS with `tls` (required).
pub fn endpoint(url: &str, tls: Option<&TlsFiles>) -> Result<Endpoint, PushError> {
    let bad = |reason: &str| PushError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: tonic::transport::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
    let scheme = uri.scheme_str().unwrap_or_default();
    let ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(&e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    match (scheme, tls) {
        ("http", _) => Ok(ep),
        ("https", Some(tls)) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            ep.tls_config(tls.client(host).map_err(|e| bad(&e.to_string()))?)
                .map_err(|e| bad(&e.to_string()))
        }
        ("https", None) => Err(bad("https needs tls_ca, tls_cert and tls_key")),
        _ => Err(bad("the scheme must be http:// or https://")),
    }
}

pub struct Client {
    url: String,
    endpoint: Endpoint,
    reader: Reader,
    status: Arc<Mutex<CollectorStatus>>,
    /// Sent once per stream; events that are this node's go without it.
    node: Node,
}

impl Client {
    pub fn new(
        url: String,
        endpoint: Endpoint,
        reader: Reader,
        status: Arc<Mutex<CollectorStatus>>,
        node: Node,
    ) -> Self {
        if let Ok(mut s) = status.lock() {
            s.url = url.clone();
            s.acked_seq = reader.acked();
        }
        Self {
            url,
            endpoint,
            reader,
            status,
            node,
        }
    }

    fn set(&self, f: impl FnOnce(&mut CollectorStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Delivers until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        // Said once per outage, not once per retry.
        let mut told = false;
        loop {
            let result = tokio::select! {
                r = self.session(&mut backoff) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            let err = match result {
                Ok(()) => PushError::Closed,
                Err(e) => e,
            };
            let connected = self.status.lock().is_ok_and(|s| s.connected);
            if connected {
                told = false;
            }
            if !told {
                tracing::warn!(collector = %self.url, reason = %err, "collector unreachable: events are kept in the spool; retrying");
                told = true;
            } else {
                tracing::debug!(collector = %self.url, reason = %err, retry_in = ?backoff, "collector retry failed");
            }
            self.set(|s| {
                s.connected = false;
                s.last_error = err.to_string();
            });
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn session(&mut self, backoff: &mut Duration) -> Result<(), PushError> {
        let channel: Channel = self.endpoint.connect().await?;
        let mut client = CollectorServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let (tx, rx) = mpsc::channel::<PushRequest>(IN_FLIGHT);
        let mut acks = client.push(ReceiverStream::new(rx)).await?.into_inner();
        tracing::info!(collector = %self.url, from = self.reader.acked() + 1, "pushing to collector");
        self.set(|s| {
            s.connected = true;
            s.last_error.clear();
        });
        *backoff = BACKOFF_MIN;
        self.reader.rewind();
        let mut flushed = self.reader.watch();
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut node = Some(self.node.clone());
        loop {
            while in_flight.len() < IN_FLIGHT {
                let mut batch = self.reader.read_batch(BATCH_EVENTS, BATCH_BYTES)?;
                let Some(last) = batch.last().map(|e| e.seq) else {
                    break;
                };
                for ev in &mut batch {
                    if ev.node.as_ref() == Some(&self.node) {
                        ev.node = None;
                    }
                }
                tx.send(PushRequest {
                    events: batch,
                    node: node.take(),
                })
                .await
                .map_err(|_| PushError::Closed)?;
                in_flight.push_back(last);
            }
            let waiting = !in_flight.is_empty();
            tokio::select! {
                ack = acks.message() => {
                    let ack = ack?.ok_or(PushError::Closed)?;
                    // An acknowledgement past what was sent (a buggy or hostile collector)
                    // must not delete spool that never left: clamp it to the last sent.
                    let sent = in_flight.back().copied().unwrap_or_else(|| self.reader.acked());
                    let acked = ack.acked_seq.min(sent);
                    if ack.acked_seq > sent {
                        tracing::warn!(collector = %self.url, acked = ack.acked_seq, sent, "collector acknowledged events it was never sent; taken as the last one sent");
                    }
                    self.reader.ack(acked)?;
                    while in_flight.front().is_some_and(|&s| s <= acked) {
                        in_flight.pop_front();
                    }
                    self.set(|s| s.acked_seq = acked);
                }
                r = flushed.changed(), if in_flight.len() < IN_FLIGHT => {
                    if r.is_err() {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep(ACK_TIMEOUT), if waiting => {
                    return Err(PushError::AckTimeout(ACK_TIMEOUT));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_urls_are_checked_before_start() {
        assert!(endpoint("http://127.0.0.1:50051", None).is_ok());
        for bad in [
            "127.0.0.1:50051",
            "ftp://collector:21",
            "https://collector:50051",
            "not a url",
        ] {
            let e = endpoint(bad, None).unwrap_err();
            assert!(matches!(e, PushError::Url { .. }), "{bad}: {e}");
        }
    }
}
