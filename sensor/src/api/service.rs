//! `SensorService` on the local unix socket (and on TCP with mutual TLS when configured).
use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use minerwatch_proto::{
    transport::TlsFiles,
    v1::{
        Event, GetEventsRequest, GetEventsResponse, GetStatusRequest, GetStatusResponse, Loss,
        LossSource,
        event::Body,
        sensor_service_server::{SensorService, SensorServiceServer},
    },
};
use tokio::sync::mpsc;
use tokio_stream::{
    Stream,
    wrappers::{TcpListenerStream, UnixListenerStream},
};
use tonic::{Request, Response, Status};

use super::{ApiError, Shared, filter::Filter, hub::Missed};

/// Requests are small (filters); anything bigger is refused with RESOURCE_EXHAUSTED.
const MAX_REQUEST: usize = 64 << 10;
/// Most recent events one request may ask for.
const MAX_BACKLOG: u32 = 1024;

pub struct Api {
    shared: Shared,
}

/// A client's stream: its queue, with a loss record put in where it fell behind.
struct EventStream {
    rx: mpsc::Receiver<Arc<Event>>,
    missed: Arc<Mutex<Missed>>,
    held: Option<Arc<Event>>,
    node: minerwatch_proto::v1::Node,
}

impl EventStream {
    fn take_missed(&self, before_seq: Option<u64>) -> Option<GetEventsResponse> {
        let mut m = self.missed.lock().ok()?;
        // Missed events came after everything queued before them.
        if m.count == 0 || before_seq.is_some_and(|s| s < m.first_seq) {
            return None;
        }
        let got = std::mem::take(&mut *m);
        Some(GetEventsResponse {
            event: Some(Event {
                node: Some(self.node.clone()),
                // Not in the sensor's sequence: a record for this client alone.
                seq: 0,
                time_unix_nano: super::convert::unix_nano(std::time::SystemTime::now()),
                body: Some(Body::Loss(Loss {
                    source: LossSource::ClientQueue as i32,
                    count: got.count,
                    first_seq: got.first_seq,
                    last_seq: got.last_seq,
                    detail: "this client read too slowly; its queue was full".into(),
                })),
            }),
        })
    }
}

impl Stream for EventStream {
    type Item = Result<GetEventsResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let ev = match self.held.take() {
            Some(ev) => ev,
            None => match self.rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => ev,
                Poll::Ready(None) => return Poll::Ready(self.take_missed(None).map(Ok)),
                Poll::Pending => {
                    return match self.take_missed(None) {
                        Some(loss) => Poll::Ready(Some(Ok(loss))),
                        None => Poll::Pending,
                    };
                }
            },
        };
        if let Some(loss) = self.take_missed(Some(ev.seq)) {
            self.held = Some(ev);
            return Poll::Ready(Some(Ok(loss)));
        }
        Poll::Ready(Some(Ok(GetEventsResponse {
            event: Some(Event::clone(&ev)),
        })))
    }
}

#[tonic::async_trait]
impl SensorService for Api {
    type GetEventsStream = Pin<Box<dyn Stream<Item = Result<GetEventsResponse, Status>> + Send>>;

    async fn get_events(
        &self,
        req: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetEventsStream>, Status> {
        let r = req.into_inner();
        if r.backlog > MAX_BACKLOG {
            return Err(ApiError::BadFilter {
                reason: format!("backlog {} is over the maximum {MAX_BACKLOG}", r.backlog),
            }
            .into());
        }
        let filter = Filter::new(&r.allow, &r.deny)?;
        let sub = self
            .shared
            .hub
            .subscribe(filter, r.backlog as usize, r.follow);
        tracing::debug!(follow = r.follow, backlog = r.backlog, "GetEvents client");
        Ok(Response::new(Box::pin(EventStream {
            rx: sub.rx,
            missed: sub.missed,
            held: None,
            node: self.shared.node.clone(),
        })))
    }

    async fn get_status(
        &self,
        _req: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        Ok(Response::new(GetStatusResponse {
            node: Some(self.shared.node.clone()),
            status: Some(self.shared.status()),
        }))
    }
}

fn server(shared: &Shared) -> SensorServiceServer<Api> {
    SensorServiceServer::new(Api {
        shared: shared.clone(),
    })
    .max_decoding_message_size(MAX_REQUEST)
}

/// Binds the unix socket (mode 0600: events carry every user's command lines). A socket
/// left by a sensor that died is replaced; one a live sensor answers on is an error.
pub async fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ApiError> {
    let bind_err = |source| ApiError::Bind {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ApiError::InUse {
                path: path.display().to_string(),
            });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves on the unix socket until `stop`; removes the socket file afterwards.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    shared: Shared,
    stop: impl Future<Output = ()>,
) {
    let r = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(32)
        .add_service(server(&shared))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await;
    if let Err(e) = r {
        tracing::error!(reason = %e, socket = %path.display(), "sensor API stopped");
    }
    let _ = std::fs::remove_file(&path);
}

/// Binds TCP for the API with mutual TLS.
pub async fn bind_tcp(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, ApiError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind {
            path: addr.to_string(),
            source,
        })
}

/// Builds the TCP API with mutual TLS; certificate problems show here, at start-up.
pub fn serve_tcp(
    listener: tokio::net::TcpListener,
    tls: &TlsFiles,
    shared: Shared,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = ()> + Send + 'static, ApiError> {
    let tls = tls.server().map_err(|e| ApiError::Tls(e.to_string()))?;
    let router = tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .concurrency_limit_per_connection(32)
        .add_service(server(&shared));
    Ok(async move {
        let r = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
            .await;
        if let Err(e) = r {
            tracing::error!(reason = %e, "sensor TCP API stopped");
        }
    })
}
