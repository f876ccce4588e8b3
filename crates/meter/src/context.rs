//! What the client-facing front ends share, as narrow contexts: each module takes the parts it
//! needs (admission reads only the [`Gate`], the vendor leg only [`Vendors`], accounting only
//! [`Metering`]), so none of them reads the whole configuration.

use std::sync::Arc;

use pt_config::{Cidr, LimitsConfig};

use crate::drain::Drain;
use crate::lifecycle::Gate;
use crate::metering::Metering;
use crate::slots::Slots;
use crate::vendor::Vendors;

#[derive(Debug)]
pub struct Context {
    pub limits: LimitsConfig,
    pub gate: Gate,
    pub metering: Arc<Metering>,
    pub vendors: Vendors,
    pub drain: Arc<Drain>,
    pub slots: Arc<Slots>,
    /// Client addresses allowed to connect (empty: any).
    pub allowed_sources: Vec<Cidr>,
}
