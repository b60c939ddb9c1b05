//! What the kernel does not say about a process, read from the system: /proc ([`proc`]) and
//! user names through NSS ([`users`]), Slurm jobs ([`slurm`]), GPUs through NVML ([`gpu`]). Nothing here keeps detection state.
pub mod gpu;
pub mod proc;
pub mod slurm;
pub mod users;
