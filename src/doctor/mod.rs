//! `connwarden doctor`: what a configuration really does on this machine.
//!
//! [`inspect`] opens a loopback connection with the configured options on both ends, reads
//! back what took effect, sets it beside the kernel's defaults ([`KernelDefaults`]), gives the
//! worst-case detection time of each failure mode and warns about settings that defeat their
//! purpose; [`NatsDurability`] says whether the NATS servers of a JetStream sink sync what they
//! acknowledge. `measure` (Linux, root) measures the failure modes for real, in network namespaces.
//! The JSON form of both is documented in `docs/DOCTOR.md`.

mod inspect;
mod kernel;
#[cfg(target_os = "linux")]
pub mod loss;
#[cfg(target_os = "linux")]
pub mod measure;
mod nats;
pub mod odds;

pub use inspect::{
    bounds, inspect, warnings, Bound, InspectError, Inspection, OptionRow, Security, Warning,
    MIDDLEBOX_IDLE_TIMEOUTS,
};
pub use kernel::{retransmission_bound, KernelDefaults};
pub use nats::NatsDurability;
pub use odds::FalseCloses;
