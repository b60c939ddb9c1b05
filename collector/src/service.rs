//! `CollectorService`: takes each sensor's stream of batches, stores them, acknowledges.
use std::pin::Pin;

use minerwatch_proto::v1::{
    PushRequest, PushResponse,
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
            PushError::NoNode { .. } | PushError::NoSeq { .. } => {
                Status::invalid_argument(e.to_string())
            }
            PushError::TooMany(_) => Status::resource_exhausted(e.to_string()),
            PushError::Store(_) => Status::unavailable(e.to_string()),
        }
    }
}

fn check(req: &PushRequest) -> Result<(), PushError> {
    if req.events.len() > MAX_BATCH {
        return Err(PushError::TooMany(req.events.len()));
    }
    for (index, ev) in req.events.iter().enumerate() {
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
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(status) => {
                        // Oversized or malformed: the sender is told why, then the stream ends.
                        tracing::warn!(%peer, code = ?status.code(), reason = status.message(), "push stream refused");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                if let Err(e) = check(&batch) {
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
        let ok = Event {
            node: Some(Node {
                host: "n1".into(),
                ..Default::default()
            }),
            seq: 1,
            ..Default::default()
        };
        assert!(
            check(&PushRequest {
                events: vec![ok.clone()]
            })
            .is_ok()
        );
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
            let e = check(&PushRequest {
                events: vec![ok.clone(), bad],
            })
            .unwrap_err();
            assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
        }
    }
}
