//! The fault plan of a simulated disk: I/O errors by probability or by rule, latent sector
//! errors, and misdirected writes. Everything is off by default. Decisions are drawn at
//! submission from the disk's own `faults` stream, so adding faults never reshuffles timing.

use serde::{Deserialize, Serialize};

/// The kind of request a fault rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultOp {
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Flushes.
    Flush,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultEffect {
    /// The request fails with a media error. A failed write lands on some sectors and not others.
    MediaError,
    /// The write succeeds but lands at another sector-aligned offset (silent corruption).
    Misdirect,
    /// The write lands, and then one sector of it becomes unreadable until rewritten.
    LatentSector,
}

/// A deterministic fault: fires on every request matching all given conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    /// Request kind to match (any when absent).
    #[serde(default)]
    pub op: Option<FaultOp>,
    /// Inclusive range of the disk's request numbers (0-based submission order) to match.
    #[serde(default)]
    pub request_range: Option<(u64, u64)>,
    /// Byte range `[start, end)` the request must overlap.
    #[serde(default)]
    pub offset_range_bytes: Option<(u64, u64)>,
    /// What happens.
    pub effect: FaultEffect,
}

impl FaultRule {
    fn matches(&self, op: FaultOp, request: u64, offset_bytes: u64, len_bytes: u64) -> bool {
        self.op.is_none_or(|want| want == op)
            && self.request_range.is_none_or(|(first, last)| (first..=last).contains(&request))
            && self
                .offset_range_bytes
                .is_none_or(|(start, end)| offset_bytes < end && offset_bytes + len_bytes.max(1) > start)
    }
}

/// Every fault a disk may inject. `Default` is no faults at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultPlan {
    /// Chance per million that a read fails with a media error.
    pub read_error_per_million: u32,
    /// Chance per million that a write fails with a media error.
    pub write_error_per_million: u32,
    /// Chance per million that a flush fails (nothing becomes durable).
    pub flush_error_per_million: u32,
    /// Chance per million that a write, after landing, leaves one of its sectors unreadable.
    pub latent_error_per_million: u32,
    /// Sectors unreadable from the start (until rewritten).
    pub latent_sectors: Vec<u64>,
    /// Chance per million that a write lands at a wrong offset.
    pub misdirect_per_million: u32,
    /// Deterministic rules, checked before the probabilities.
    pub rules: Vec<FaultRule>,
}

impl FaultPlan {
    /// True when the plan can inject nothing.
    pub fn is_empty(&self) -> bool {
        *self == FaultPlan::default()
    }

    /// The fault (if any) for a request, drawing from `rng` only for non-zero probabilities.
    pub(crate) fn decide(
        &self,
        rng: &mut crate::SimRng,
        op: FaultOp,
        request: u64,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> Option<FaultEffect> {
        if let Some(rule) = self.rules.iter().find(|rule| rule.matches(op, request, offset_bytes, len_bytes)) {
            return Some(rule.effect);
        }
        match op {
            FaultOp::Read => rng.chance_per_million(self.read_error_per_million).then_some(FaultEffect::MediaError),
            FaultOp::Flush => rng.chance_per_million(self.flush_error_per_million).then_some(FaultEffect::MediaError),
            FaultOp::Write => {
                if rng.chance_per_million(self.write_error_per_million) {
                    Some(FaultEffect::MediaError)
                } else if rng.chance_per_million(self.misdirect_per_million) {
                    Some(FaultEffect::Misdirect)
                } else if rng.chance_per_million(self.latent_error_per_million) {
                    Some(FaultEffect::LatentSector)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Seed, SimRng};

    #[test]
    fn rules_match_on_every_condition() {
        let plan = FaultPlan {
            rules: vec![FaultRule {
                op: Some(FaultOp::Write),
                request_range: Some((3, 5)),
                offset_range_bytes: Some((4096, 8192)),
                effect: FaultEffect::MediaError,
            }],
            ..FaultPlan::default()
        };
        let mut rng = SimRng::stream(Seed(1), "faults");
        assert_eq!(plan.decide(&mut rng, FaultOp::Write, 4, 4000, 512), Some(FaultEffect::MediaError));
        assert_eq!(plan.decide(&mut rng, FaultOp::Write, 4, 3000, 512), None);
        assert_eq!(plan.decide(&mut rng, FaultOp::Read, 4, 4096, 512), None);
        assert_eq!(plan.decide(&mut rng, FaultOp::Write, 6, 4096, 512), None);
        assert_eq!(rng.draws(), 0, "a plan without probabilities draws nothing");
        assert!(FaultPlan::default().is_empty());
        assert!(!plan.is_empty());
    }

    #[test]
    fn probabilities_fire_at_roughly_their_rate() {
        let plan = FaultPlan { read_error_per_million: 100_000, ..FaultPlan::default() };
        let mut rng = SimRng::stream(Seed(2), "faults");
        let fired = (0..10_000).filter(|i| plan.decide(&mut rng, FaultOp::Read, *i, 0, 512).is_some()).count();
        assert!((800..1200).contains(&fired), "fired {fired} of 10000 at 10%");
    }
}
