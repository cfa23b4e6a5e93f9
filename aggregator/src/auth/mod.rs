//! Who may connect and who may see what.
//!
//! - [`registry`]: the `agents` table (tenant, name, certificate serial or
//!   token hash, revocation), cached for the gate.
//! - [`pki`]: the CA directory (`ca init`, agent certificates, the CRL).
//! - [`access`]: roles, grants and the [`access::Scope`] every data query
//!   takes.
//! - [`password`]: argon2id password hashes.

pub mod access;
pub mod password;
pub mod pki;
pub mod registry;
