//! `CollectorService`: takes each sensor's stream of batches, stores them, acknowledges.
use std::pin::Pin;

use minerwatch_proto::v1::{
    Node, PushRequest, PushResponse,
    collector_service_server::{CollectorService, CollectorServiceServer},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::store::{Store, StoreError};

/// Largest message accepted: a sensor's batch is about 1 MiB at most.
pub const MAX_MESSAGE: usize = 16 << 20;
/// Events in one batch, at most.
const MAX_BATCH: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("event {index} of the batch has no node identity")]
    NoNode { index: usize },
    #[error("the stream's node changed from {from} to {to}")]
    NodeChanged { from: String, to: String },
    #[error("event {index} of the batch has sequence number 0")]
    NoSeq { index: usize },
    #[error("batch of {0} events is over the limit of {MAX_BATCH}")]
    TooMany(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The one mapping from collector errors to gRPC status codes.
impl From<PushError> for Status {
    fn from(e: PushError) -> Self {
        match e {
            PushError::NoNode { .. } | PushError::NoSeq { .. } | PushError::NodeChanged { .. } => {
                Status::invalid_argument(e.to_string())
            }
            PushError::TooMany(_) => Status::resource_exhausted(e.to_string()),
            PushError::Store(_) => Status::unavailable(e.to_string()),
        }
    }
}

/// Checks a batch and stamps the stream's node (`stream`, from the first request that named
/// one) on the events that came without theirs.
fn check(req: &mut PushRequest, stream: &mut Option<Node>) -> Result<(), PushError> {
    if req.events.len() > MAX_BATCH {
        return Err(PushError::TooMany(req.events.len()));
    }
    if let Some(n) = req.node.take().filter(|n| !n.host.is_empty()) {
        // One stream, one sensor: a node named again must be the same one.
        if let Some(old) = stream.as_ref().filter(|old| **old != n) {
            return Err(PushError::NodeChanged {
                from: format!("{}/{}", old.host, old.boot_id),
                to: format!("{}/{}", n.host, n.boot_id),
            });
        }
        *stream = Some(n);
    }
    for (index, ev) in req.events.iter_mut().enumerate() {
        if ev.node.is_none() {
            ev.node = stream.clone();
        }
        if ev.node.as_ref().is_none_or(|n| n.host.is_empty()) {
            return Err(PushError::NoNode { index });
        }
        if ev.seq == 0 {
            return Err(PushError::NoSeq { index });
        }
    }
    Ok(())
}

pub struct Collector {
    store: Store,
}

pub fn server(store: Store) -> CollectorServiceServer<Collector> {
    CollectorServiceServer::new(Collector { store })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(1 << 10)
}

#[tonic::async_trait]
impl CollectorService for Collector {
    type PushStream = Pin<Box<dyn Stream<Item = Result<PushResponse, Status>> + Send>>;

    async fn push(
        &self,
        req: Request<Streaming<PushRequest>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let peer = req
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let store = self.store.clone();
        tokio::spawn(async move {
            tracing::info!(%peer, "sensor connected");
            let mut acked = 0u64;
            let mut node = None;
            loop {
                let mut batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(status) => {
                        // Oversized or malformed: the sender is told why, then the stream ends.
                        tracing::warn!(%peer, code = ?status.code(), reason = status.message(), "push stream refused");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                if let Err(e) = check(&mut batch, &mut node) {
                    tracing::warn!(%peer, reason = %e, "batch refused");
                    let _ = tx.send(Err(e.into())).await;
                    break;
                }
                if batch.events.is_empty() {
                    continue;
                }
                match store.push(batch.events, peer.clone()).await {
                    Ok(last) => {
                        acked = acked.max(last);
                        if tx
                            .send(Ok(PushResponse { acked_seq: acked }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(PushError::from(e).into())).await;
                        break;
                    }
                }
            }
            tracing::info!(%peer, acked, "sensor disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minerwatch_proto::v1::{Event, Node};

    #[test]
    fn batches_without_identity_are_refused_with_invalid_argument() {
        let n1 = Node {
            host: "n1".into(),
            ..Default::default()
        };
        let ok = Event {
            node: Some(n1.clone()),
            seq: 1,
            ..Default::default()
        };
        let req = |events| PushRequest { events, node: None };
        assert!(check(&mut req(vec![ok.clone()]), &mut None).is_ok());
        for bad in [
            Event {
                node: None,
                ..ok.clone()
            },
            Event {
                seq: 0,
                ..ok.clone()
            },
        ] {
            let e = check(&mut req(vec![ok.clone(), bad]), &mut None).unwrap_err();
            assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn the_stream_node_is_stamped_on_events_without_one() {
        let n1 = Node {
            host: "n1".into(),
            ..Default::default()
        };
        let old = Node {
            host: "n1".into(),
            boot_id: "earlier".into(),
            ..Default::default()
        };
        let bare = Event {
            seq: 1,
            ..Default::default()
        };
        let spooled = Event {
            node: Some(old.clone()),
            seq: 2,
            ..Default::default()
        };
        let mut stream = None;
        let mut first = PushRequest {
            events: vec![bare.clone(), spooled],
            node: Some(n1.clone()),
        };
        check(&mut first, &mut stream).unwrap();
        assert_eq!(first.events[0].node.as_ref(), Some(&n1));
        assert_eq!(
            first.events[1].node.as_ref(),
            Some(&old),
            "an event's own node stays"
        );
        let mut next = PushRequest {
            events: vec![bare],
            node: None,
        };
        check(&mut next, &mut stream).unwrap();
        assert_eq!(next.events[0].node.as_ref(), Some(&n1), "later batches too");
        let mut other = PushRequest {
            events: vec![],
            node: Some(old),
        };
        let e = check(&mut other, &mut stream).unwrap_err();
        assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
    }
}
