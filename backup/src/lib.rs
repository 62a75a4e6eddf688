//! Nod's backups. A backup is a **chain**: a full snapshot (etcd's file
//! format, as `nod snapshot save` writes it) and, when incremental, the
//! segments of changes a watch saw after it, so a restore can reach any
//! revision the chain covers. This crate holds the formats and the rules:
//! names in a destination ([`names`]), the manifest ([`manifest`]), the
//! segment codec and its chain checks ([`segment`]), retention
//! ([`retention`]); destinations, S3 or a directory ([`store`]); taking
//! backups over `nod-client` ([`writer`]) and reading them back
//! ([`reader`]). It links no server code: `nod` imports what a restore
//! reads into its store.

pub mod manifest;
pub mod names;
pub mod reader;
pub mod retention;
pub mod segment;
pub mod store;
pub mod writer;

/// Makes ring rustls' process-wide provider, which the S3 client's HTTPS
/// (reqwest with `rustls-no-provider`) uses. Call once before the first
/// S3 request; later calls do nothing.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
