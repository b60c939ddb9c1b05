//! A gRPC client that misbehaves on purpose, for the end-to-end tests: oversized messages,
//! wrong certificates. Prints `OK` or `ERR <code> <message>` and exits 0 either way.
//!
//! `status-unix SOCKET` · `status-tls ADDR CA CERT KEY` · `oversized-unix SOCKET` ·
//! `oversized-tls ADDR CA CERT KEY` · `push-oversized URL [CA CERT KEY]`
use std::path::PathBuf;

use minerwatch_proto::{
    transport::{TlsFiles, unix_channel},
    v1::{
        Event, EventFilter, GetEventsRequest, GetStatusRequest, Node, PushRequest,
        collector_service_client::CollectorServiceClient,
        sensor_service_client::SensorServiceClient,
    },
};
use tonic::transport::{Channel, Endpoint};

fn tls(args: &[String]) -> Option<TlsFiles> {
    (args.len() >= 3).then(|| TlsFiles {
        ca: PathBuf::from(&args[0]),
        cert: PathBuf::from(&args[1]),
        key: PathBuf::from(&args[2]),
    })
}

async fn tcp(url: &str, tls: Option<TlsFiles>) -> Result<Channel, String> {
    let mut ep = Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
    if let Some(t) = tls {
        ep = ep
            .tls_config(t.client("localhost").map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    ep.connect().await.map_err(|e| format!("{e:?}"))
}

fn huge_filter() -> GetEventsRequest {
    GetEventsRequest {
        allow: vec![EventFilter {
            exe_regex: "a".repeat(1 << 20),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn report(r: Result<(), tonic::Status>) -> String {
    match r {
        Ok(()) => "OK".into(),
        Err(s) => format!("ERR {:?} {}", s.code(), s.message()),
    }
}

async fn run(args: Vec<String>) -> String {
    let what = args.first().map(String::as_str).unwrap_or_default();
    let rest = &args[1.min(args.len())..];
    match what {
        "status-unix" | "oversized-unix" => {
            let mut c = SensorServiceClient::new(unix_channel(rest[0].as_ref()));
            if what == "status-unix" {
                report(c.get_status(GetStatusRequest {}).await.map(|_| ()))
            } else {
                report(c.get_events(huge_filter()).await.map(|_| ()))
            }
        }
        "status-tls" | "oversized-tls" => {
            let ch = match tcp(&format!("https://{}", rest[0]), tls(&rest[1..])).await {
                Ok(ch) => ch,
                Err(e) => return format!("ERR connect {e}"),
            };
            let mut c = SensorServiceClient::new(ch);
            if what == "status-tls" {
                report(c.get_status(GetStatusRequest {}).await.map(|_| ()))
            } else {
                report(c.get_events(huge_filter()).await.map(|_| ()))
            }
        }
        "push-oversized" => {
            let ch = match tcp(&rest[0], tls(&rest[1..])).await {
                Ok(ch) => ch,
                Err(e) => return format!("ERR connect {e}"),
            };
            let ev = Event {
                node: Some(Node {
                    host: "x".repeat(1 << 20),
                    ..Default::default()
                }),
                seq: 1,
                ..Default::default()
            };
            let req = PushRequest {
                events: vec![ev; 20],
                node: None,
            };
            let mut c = CollectorServiceClient::new(ch);
            let r = async {
                let mut acks = c.push(tokio_stream_once(req)).await?.into_inner();
                acks.message().await.map(|_| ())
            }
            .await;
            report(r)
        }
        _ => "usage: see the source".into(),
    }
}

/// A request stream of one message that then stays open, as a real sensor's does.
fn tokio_stream_once(req: PushRequest) -> impl tonic::IntoStreamingRequest<Message = PushRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _ = tx.try_send(req);
    std::mem::forget(tx);
    ReceiverStream(rx)
}

struct ReceiverStream(tokio::sync::mpsc::Receiver<PushRequest>);

impl tonic::codegen::tokio_stream::Stream for ReceiverStream {
    type Item = PushRequest;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<PushRequest>> {
        self.0.poll_recv(cx)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("{}", rt.block_on(run(args)));
}
