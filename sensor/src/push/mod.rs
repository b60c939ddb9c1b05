//! Delivery to collectors: every event goes to the on-disk [`spool`] first, and one
//! [`client`] per collector streams it from there and advances on acknowledgements.
pub mod client;
pub mod spool;
