//! Exists so that `sensor` can name this crate as a build dependency (and be rebuilt
//! when it changes); the programs live in the binary target, `main.rs`.
#![no_std]
