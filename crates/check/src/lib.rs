//! The a–d validator.
//!
//! [`source`] reads the meter's families from a meter's `/metrics` or from Prometheus (the HTTP
//! API, summed across every meter it scrapes) into one shape, [`source::Figures`]; [`checks`]
//! decides requirements a–d and, given a load ledger, reconciles the meter with ground truth;
//! [`render`] prints the verdict for humans or as JSON. Metric and label names come from the
//! shared metrics crate, so a rename there fails to compile here.
//!
//! Beyond "is there data", each check proves the two label groups agree: per vendor, the sum
//! over pods equals the sum over destinations, to the request and to the byte. They are counted
//! at the same moments from the same handles, so any difference is a metering bug.

pub mod checks;
pub mod render;
pub mod source;

pub use checks::{Verdict, evaluate};
pub use source::{Figures, Source, SourceError};
