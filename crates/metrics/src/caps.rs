//! Bounded label values.
//!
//! A [`LabelCap`] admits the first `limit` distinct values it is asked about and folds every
//! later new value into [`OTHER`]. First-come admission (rather than a running top-K) is
//! deliberate: a value, once exported, keeps its series, so counters never move between label
//! sets and every total over a family stays exact.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, RwLock};

/// The label value that absorbs everything past a cap.
pub const OTHER: &str = "other";
/// The label value of an identity the meter could not determine.
pub const UNKNOWN: &str = "unknown";

/// An immutable label value, cheap to clone (a reference count).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    pub fn new(value: &str) -> Name {
        Name(Arc::from(value))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// `Name` hashes and compares exactly as its `str`, so sets of names can be probed with `&str`.
impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, &self.0)
    }
}

/// Admits at most `limit` distinct values; see the module documentation.
#[derive(Debug)]
pub struct LabelCap {
    limit: usize,
    admitted: RwLock<HashSet<Name>>,
    other: Name,
}

impl LabelCap {
    pub fn new(limit: usize) -> LabelCap {
        LabelCap {
            limit,
            admitted: RwLock::new(HashSet::new()),
            other: Name::new(OTHER),
        }
    }

    /// The label value to use for `value`: itself if admitted (now or before), else `other`.
    pub fn admit(&self, value: &str) -> Name {
        // A poisoned lock only means another thread panicked mid-insert; the set is still a
        // valid set, and metering must not stop (it fails open).
        if let Some(name) = self
            .admitted
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(value)
        {
            return name.clone();
        }
        let mut admitted = self.admitted.write().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = admitted.get(value) {
            return name.clone();
        }
        if admitted.len() >= self.limit {
            return self.other.clone();
        }
        let name = Name::new(value);
        admitted.insert(name.clone());
        name
    }

    /// The value's label when it is already admitted (or is [`OTHER`]), admitting nothing.
    pub fn known(&self, value: &str) -> Option<Name> {
        if value == OTHER {
            return Some(self.other.clone());
        }
        self.admitted
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(value)
            .cloned()
    }

    /// How many distinct values are admitted.
    pub fn len(&self) -> usize {
        self.admitted
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_limit_fold_into_other_and_admitted_ones_stay() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.admit("a.com").as_str(), "a.com");
        assert_eq!(cap.admit("b.com").as_str(), "b.com");
        assert_eq!(cap.admit("c.com").as_str(), OTHER);
        assert_eq!(cap.admit("a.com").as_str(), "a.com");
        assert_eq!(cap.len(), 2);
    }

    #[test]
    fn a_zero_limit_folds_everything() {
        let cap = LabelCap::new(0);
        assert_eq!(cap.admit("a.com").as_str(), OTHER);
        assert!(cap.is_empty());
    }
}
