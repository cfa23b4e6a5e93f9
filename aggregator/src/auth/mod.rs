//! Who may connect: agents and the certificate authority that signs them.
//!
//! - [`registry`]: the `agents` table (tenant, name, certificate serial or
//!   token hash, revocation), cached for the gate.
//! - [`pki`]: the CA directory (`ca init`, agent certificates, the CRL).

pub mod pki;
pub mod registry;
