//! minerwatch: an eBPF sensor that finds cryptocurrency miners on Linux cluster nodes.
//!
//! Data flows one way: [`kernel`] (hooks, rings, decoding) -> [`pipeline`] (one record per
//! process, signals behind one interface, the verdict from `minerwatch-detect`) -> [`api`]
//! (one numbered event stream) -> [`output`], `GetEvents` clients and [`push`] to collectors.
//! [`enrich`] reads what the kernel does not say (/proc, users); [`files`] watches the few
//! directories where persistence is set up (fanotify). See ARCHITECTURE.md.
pub mod api;
pub mod check;
pub mod config;
pub mod enrich;
pub mod files;
pub mod intel;
pub mod kernel;
pub mod output;
pub mod pipeline;
pub mod push;

pub use pipeline::{RunError, run};
