//! vizhub-migrate: moves VizHub V2 (ShareDB json0 on MongoDB) to VizHub V3 (ShareDB json1),
//! revision history included.
//!
//! The translation core is pure and lives here: [`v2`] reads the old model, [`json0`] applies and
//! inverts V2's ops, [`history`] rebuilds the revision history as commits, [`json1`] builds and
//! applies V3's ops, [`translate`] produces every V3 document of a viz, [`outcome`] names how a
//! job ends. See `shared/spec/MIGRATION.md` for the contract.

pub mod analytics;
pub mod broker;
pub mod cache;
pub mod cli;
pub mod config;
pub mod dlq;
// Development data (feature `dev-data`, on by default; off in the production build): the fixture
// files and the seeder. Nothing else in the library uses them outside its tests.
#[cfg(feature = "dev-data")]
pub mod fixtures;
pub mod history;
pub mod ids;
pub mod job;
pub mod json0;
pub mod json1;
pub mod ledger;
pub mod merge;
pub mod metrics;
pub mod migrate;
pub mod outcome;
pub mod planner;
pub mod preflight;
pub mod preview;
pub mod report;
pub mod retry;
#[cfg(feature = "dev-data")]
pub mod seed;
pub mod status;
pub mod translate;
pub mod v2;
pub mod v3;
pub mod verify;
pub mod worker;

pub use outcome::{Disposition, Outcome};

/// The primordial viz, "Hello VizHub": the only viz with `forkedFrom: null`, and the parent
/// of every viz whose own parent is missing.
pub const PRIMORDIAL_VIZ_ID: &str = "86a75dc8bdbe4965ba353a79d4bd44c8";
