//! Mirror types of the simulator's types that files hold, used through `#[serde(with = …)]` on
//! the configuration's fields. Each conversion destructures the simulator's type without `..`,
//! so a field added or renamed in `fvd-sim` fails to compile here instead of changing a file.

use fvd_sim::{AtomicUnit, CrashStrategy, FaultEffect, FaultOp, FaultPlan, FaultRule, WriteFate};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// [`AtomicUnit`] as files write it: `"sector"`, `"page"`, `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AtomicUnitV1 {
    /// [`AtomicUnit::Sector`].
    Sector,
    /// [`AtomicUnit::Page`].
    Page,
    /// [`AtomicUnit::None`].
    None,
}

impl From<AtomicUnit> for AtomicUnitV1 {
    fn from(unit: AtomicUnit) -> AtomicUnitV1 {
        match unit {
            AtomicUnit::Sector => AtomicUnitV1::Sector,
            AtomicUnit::Page => AtomicUnitV1::Page,
            AtomicUnit::None => AtomicUnitV1::None,
        }
    }
}

impl From<AtomicUnitV1> for AtomicUnit {
    fn from(unit: AtomicUnitV1) -> AtomicUnit {
        match unit {
            AtomicUnitV1::Sector => AtomicUnit::Sector,
            AtomicUnitV1::Page => AtomicUnit::Page,
            AtomicUnitV1::None => AtomicUnit::None,
        }
    }
}

/// [`CrashStrategy`] as files write it: tagged by `kind`, snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[allow(missing_docs)] // each variant and field is its `CrashStrategy` namesake
pub enum CrashStrategyV1 {
    RandomSubset { keep_per_mille: u32, tear_per_mille: u32 },
    Prefix,
    Clean,
    Subset { keep_mask: u64 },
    PrefixAt { writes: u32, units: u32, torn_bytes: u32 },
    Sampled { variant: u32, keep_per_mille: u32, tear_per_mille: u32 },
}

impl From<CrashStrategy> for CrashStrategyV1 {
    fn from(strategy: CrashStrategy) -> CrashStrategyV1 {
        match strategy {
            CrashStrategy::RandomSubset { keep_per_mille, tear_per_mille } => {
                CrashStrategyV1::RandomSubset { keep_per_mille, tear_per_mille }
            }
            CrashStrategy::Prefix => CrashStrategyV1::Prefix,
            CrashStrategy::Clean => CrashStrategyV1::Clean,
            CrashStrategy::Subset { keep_mask } => CrashStrategyV1::Subset { keep_mask },
            CrashStrategy::PrefixAt { writes, units, torn_bytes } => {
                CrashStrategyV1::PrefixAt { writes, units, torn_bytes }
            }
            CrashStrategy::Sampled { variant, keep_per_mille, tear_per_mille } => {
                CrashStrategyV1::Sampled { variant, keep_per_mille, tear_per_mille }
            }
        }
    }
}

impl From<CrashStrategyV1> for CrashStrategy {
    fn from(strategy: CrashStrategyV1) -> CrashStrategy {
        match strategy {
            CrashStrategyV1::RandomSubset { keep_per_mille, tear_per_mille } => {
                CrashStrategy::RandomSubset { keep_per_mille, tear_per_mille }
            }
            CrashStrategyV1::Prefix => CrashStrategy::Prefix,
            CrashStrategyV1::Clean => CrashStrategy::Clean,
            CrashStrategyV1::Subset { keep_mask } => CrashStrategy::Subset { keep_mask },
            CrashStrategyV1::PrefixAt { writes, units, torn_bytes } => {
                CrashStrategy::PrefixAt { writes, units, torn_bytes }
            }
            CrashStrategyV1::Sampled { variant, keep_per_mille, tear_per_mille } => {
                CrashStrategy::Sampled { variant, keep_per_mille, tear_per_mille }
            }
        }
    }
}

/// [`FaultOp`] as files write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum FaultOpV1 {
    Read,
    Write,
    Flush,
}

/// [`FaultEffect`] as files write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum FaultEffectV1 {
    MediaError,
    Misdirect,
    LatentSector,
}

/// [`FaultRule`] as files write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct FaultRuleV1 {
    #[serde(default)]
    pub op: Option<FaultOpV1>,
    #[serde(default)]
    pub request_range: Option<(u64, u64)>,
    #[serde(default)]
    pub offset_range_bytes: Option<(u64, u64)>,
    pub effect: FaultEffectV1,
}

/// [`FaultPlan`] as files write it (every field optional; absent means no fault of that kind).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct FaultPlanV1 {
    pub read_error_per_million: u32,
    pub write_error_per_million: u32,
    pub flush_error_per_million: u32,
    pub latent_error_per_million: u32,
    pub latent_sectors: Vec<u64>,
    pub misdirect_per_million: u32,
    pub rules: Vec<FaultRuleV1>,
}

impl From<FaultPlan> for FaultPlanV1 {
    fn from(plan: FaultPlan) -> FaultPlanV1 {
        let FaultPlan {
            read_error_per_million,
            write_error_per_million,
            flush_error_per_million,
            latent_error_per_million,
            latent_sectors,
            misdirect_per_million,
            rules,
        } = plan;
        let rules = rules
            .into_iter()
            .map(|FaultRule { op, request_range, offset_range_bytes, effect }| FaultRuleV1 {
                op: op.map(|op| match op {
                    FaultOp::Read => FaultOpV1::Read,
                    FaultOp::Write => FaultOpV1::Write,
                    FaultOp::Flush => FaultOpV1::Flush,
                }),
                request_range,
                offset_range_bytes,
                effect: match effect {
                    FaultEffect::MediaError => FaultEffectV1::MediaError,
                    FaultEffect::Misdirect => FaultEffectV1::Misdirect,
                    FaultEffect::LatentSector => FaultEffectV1::LatentSector,
                },
            })
            .collect();
        FaultPlanV1 {
            read_error_per_million,
            write_error_per_million,
            flush_error_per_million,
            latent_error_per_million,
            latent_sectors,
            misdirect_per_million,
            rules,
        }
    }
}

impl From<FaultPlanV1> for FaultPlan {
    fn from(plan: FaultPlanV1) -> FaultPlan {
        let FaultPlanV1 {
            read_error_per_million,
            write_error_per_million,
            flush_error_per_million,
            latent_error_per_million,
            latent_sectors,
            misdirect_per_million,
            rules,
        } = plan;
        FaultPlan {
            read_error_per_million,
            write_error_per_million,
            flush_error_per_million,
            latent_error_per_million,
            latent_sectors,
            misdirect_per_million,
            rules: rules
                .into_iter()
                .map(|FaultRuleV1 { op, request_range, offset_range_bytes, effect }| FaultRule {
                    op: op.map(|op| match op {
                        FaultOpV1::Read => FaultOp::Read,
                        FaultOpV1::Write => FaultOp::Write,
                        FaultOpV1::Flush => FaultOp::Flush,
                    }),
                    request_range,
                    offset_range_bytes,
                    effect: match effect {
                        FaultEffectV1::MediaError => FaultEffect::MediaError,
                        FaultEffectV1::Misdirect => FaultEffect::Misdirect,
                        FaultEffectV1::LatentSector => FaultEffect::LatentSector,
                    },
                })
                .collect(),
        }
    }
}

/// [`WriteFate`] as files write it (a crash's resolution, one entry per unflushed write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct WriteFateV1 {
    pub request: u64,
    pub offset_bytes: u64,
    pub len_bytes: u64,
    pub executed: bool,
    pub units: String,
}

/// `#[serde(with = "crate::schema::sim::write_fates")]` (a list).
pub mod write_fates {
    use super::*;

    /// Writes the mirrors.
    pub fn serialize<S: Serializer>(fates: &[WriteFate], s: S) -> Result<S::Ok, S::Error> {
        fates
            .iter()
            .map(|WriteFate { request, offset_bytes, len_bytes, executed, units }| WriteFateV1 {
                request: *request,
                offset_bytes: *offset_bytes,
                len_bytes: *len_bytes,
                executed: *executed,
                units: units.clone(),
            })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    /// Reads the mirrors.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<WriteFate>, D::Error> {
        Ok(Vec::<WriteFateV1>::deserialize(d)?
            .into_iter()
            .map(|WriteFateV1 { request, offset_bytes, len_bytes, executed, units }| WriteFate {
                request,
                offset_bytes,
                len_bytes,
                executed,
                units,
            })
            .collect())
    }
}

/// `#[serde(with = "crate::schema::sim::MODULE")]` for a simulator type written as its mirror.
macro_rules! written_as {
    ($module:ident, $ty:ty, $mirror:ty) => {
        #[doc = concat!("`#[serde(with = \"crate::schema::sim::", stringify!($module), "\")]`: [`", stringify!($ty), "`] as [`", stringify!($mirror), "`].")]
        pub mod $module {
            use super::*;

            /// Writes the mirror.
            pub fn serialize<S: Serializer>(value: &$ty, s: S) -> Result<S::Ok, S::Error> {
                <$mirror>::from(<$ty as Clone>::clone(value)).serialize(s)
            }

            /// Reads the mirror.
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                <$mirror>::deserialize(d).map(<$ty>::from)
            }
        }
    };
}

written_as!(atomic_unit, AtomicUnit, AtomicUnitV1);
written_as!(crash_strategy, CrashStrategy, CrashStrategyV1);
written_as!(fault_plan, FaultPlan, FaultPlanV1);

/// `#[serde(with = "crate::schema::sim::atomic_units")]` (a list).
pub mod atomic_units {
    use super::*;

    /// Writes the mirrors.
    pub fn serialize<S: Serializer>(units: &[AtomicUnit], s: S) -> Result<S::Ok, S::Error> {
        units.iter().map(|u| AtomicUnitV1::from(*u)).collect::<Vec<_>>().serialize(s)
    }

    /// Reads the mirrors.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AtomicUnit>, D::Error> {
        Vec::<AtomicUnitV1>::deserialize(d).map(|v| v.into_iter().map(AtomicUnit::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirrors_write_what_the_simulators_types_wrote() {
        // Version 1 files were written by the simulator's own derives: the mirrors must agree.
        let strategies = [
            CrashStrategy::RANDOM,
            CrashStrategy::Prefix,
            CrashStrategy::Clean,
            CrashStrategy::Subset { keep_mask: 5 },
            CrashStrategy::PrefixAt { writes: 1, units: 2, torn_bytes: 3 },
            CrashStrategy::Sampled { variant: 4, keep_per_mille: 5, tear_per_mille: 6 },
        ];
        for strategy in strategies {
            let ours = serde_json::to_value(CrashStrategyV1::from(strategy)).unwrap();
            assert_eq!(ours, serde_json::to_value(strategy).unwrap());
            assert_eq!(CrashStrategy::from(serde_json::from_value::<CrashStrategyV1>(ours).unwrap()), strategy);
        }
        for unit in [AtomicUnit::Sector, AtomicUnit::Page, AtomicUnit::None] {
            assert_eq!(serde_json::to_value(AtomicUnitV1::from(unit)).unwrap(), serde_json::to_value(unit).unwrap());
        }
        let plan = FaultPlan {
            read_error_per_million: 1,
            latent_sectors: vec![9],
            rules: vec![FaultRule {
                op: Some(FaultOp::Flush),
                request_range: Some((1, 2)),
                offset_range_bytes: None,
                effect: FaultEffect::Misdirect,
            }],
            ..FaultPlan::default()
        };
        let ours = serde_json::to_value(FaultPlanV1::from(plan.clone())).unwrap();
        assert_eq!(ours, serde_json::to_value(&plan).unwrap());
        assert_eq!(FaultPlan::from(serde_json::from_value::<FaultPlanV1>(ours).unwrap()), plan);
    }
}
