//! minerwatch: an eBPF sensor that finds cryptocurrency miners on Linux cluster nodes.
//!
//! Data flows one way: kernel hooks -> ring buffer -> [`events`] (decode) -> [`proctable`]
//! (enrich) -> [`stratum`] and [`detect`] (pure verdicts) -> [`output`]. See ARCHITECTURE.md.
pub mod api;
pub mod btf;
pub mod check;
pub mod config;
pub mod detect;
pub mod events;
pub mod loader;
pub mod output;
pub mod proctable;
pub mod push;
pub mod sensor;
pub mod stratum;

pub use sensor::{RunError, run};
