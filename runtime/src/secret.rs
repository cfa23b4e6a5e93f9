//! Tokens: stored as SHA-256 hex digests, checked in constant time.
//!
//! Both binaries take bearer tokens (the agent's HTTP input, the
//! aggregator's query API and broker logins) and keep only their digests
//! in configuration and the database. [`bearer`] reads the header,
//! [`token_matches`] compares a presented token with a stored digest
//! without an early exit.

use sha2::{Digest, Sha256};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The SHA-256 digest of `token` as lower-case hex, as stored.
pub fn sha256_hex(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// The token of an `Authorization` header value `Bearer <token>`, trimmed;
/// `None` for any other scheme or an empty token.
pub fn bearer(header: &str) -> Option<&str> {
    let token = header.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

/// Whether `token` hashes to `digest_hex` (64 hex digits, either case).
/// The digests are compared in constant time; a malformed digest matches
/// nothing.
pub fn token_matches(token: &str, digest_hex: &str) -> bool {
    parse_digest(digest_hex).is_some_and(|stored| token_matches_digest(token, &stored))
}

/// Whether `token` hashes to the digest `stored`, compared in constant time.
pub fn token_matches_digest(token: &str, stored: &[u8; 32]) -> bool {
    let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    presented
        .iter()
        .zip(stored.iter())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// A SHA-256 digest from its 64 hex digits (either case).
pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_its_digest_in_either_case_and_nothing_else() {
        let digest = sha256_hex("s3cret");
        assert_eq!(digest.len(), 64);
        assert!(token_matches("s3cret", &digest));
        assert!(token_matches("s3cret", &digest.to_uppercase()));
        assert!(!token_matches("s3cret ", &digest));
        assert!(!token_matches("other", &digest));
        assert!(!token_matches("s3cret", ""));
        assert!(!token_matches("s3cret", &digest[..63]));
        assert!(!token_matches("s3cret", &format!("{}zz", &digest[..62])));
    }

    #[test]
    fn only_a_bearer_header_with_a_token_gives_one() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Bearer  abc \t"), Some("abc"));
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("bearer abc"), None);
    }
}
