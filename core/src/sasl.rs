//! SASL pieces both ends share: SCRAM-SHA-256 verifiers and the client side of a SASL
//! login over JSON-RPC.
//!
//! A verifier is what a server stores instead of a password (RFC 5803 form,
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 parts): enough to
//! check a SCRAM proof, or a plain password, and never enough to log in with.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rsasl::mechanisms::scram::tools;
use sha2::{Digest, Sha256};

/// The mechanism a client prefers when the server offers it.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The mechanism every server offers.
pub const PLAIN: &str = "PLAIN";
/// Iterations for new verifiers: the RFC's floor, which is also PostgreSQL's default.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// A stored SCRAM-SHA-256 credential.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are password equivalents for a server; keep them out of logs.
        f.debug_struct("ScramVerifier").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// A verifier for `password` with a fresh random salt.
    pub fn new(password: &str, iterations: u32) -> ScramVerifier {
        let salt: [u8; 16] = rand::random();
        ScramVerifier::with_salt(password, iterations, &salt)
    }

    fn with_salt(password: &str, iterations: u32, salt: &[u8]) -> ScramVerifier {
        let mut salted = Default::default();
        tools::hash_password::<Sha256>(password.as_bytes(), iterations, salt, &mut salted);
        let (client_key, server_key) = tools::derive_keys::<Sha256>(salted.as_slice());
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).to_vec(),
            server_key: server_key.to_vec(),
        }
    }

    /// Reads the RFC 5803 form; `None` for anything else (an argon2 hash, say).
    pub fn parse(text: &str) -> Option<ScramVerifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let verifier = ScramVerifier {
            iterations: iterations.parse().ok().filter(|i| *i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?,
            server_key: B64.decode(server).ok()?,
        };
        (verifier.stored_key.len() == 32 && verifier.server_key.len() == 32).then_some(verifier)
    }

    /// Whether `password` is the one this verifier was made from (for PLAIN logins).
    pub fn matches(&self, password: &str) -> bool {
        let candidate = ScramVerifier::with_salt(password, self.iterations, &self.salt);
        // Both are digests of the same length; compare all bytes so timing tells nothing.
        candidate.stored_key.iter().zip(&self.stored_key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example: user "user", password "pencil", this salt and 4096 rounds.
    #[test]
    fn verifiers_match_the_rfc_example_and_round_trip() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap_or_default();
        let verifier = ScramVerifier::with_salt("pencil", 4096, &salt);
        let text = verifier.to_string();
        assert_eq!(ScramVerifier::parse(&text), Some(verifier.clone()));
        assert!(verifier.matches("pencil") && !verifier.matches("pencil2"));
        assert!(ScramVerifier::parse("$argon2id$v=19$m=19456,t=2,p=1$abc$def").is_none());
        assert!(ScramVerifier::parse("SCRAM-SHA-256$0:AA==$AA==:AA==").is_none());
        assert!(format!("{verifier:?}").contains("iterations") && !format!("{verifier:?}").contains("stored"));
        let fresh = ScramVerifier::new("pencil", 4096);
        assert_ne!(fresh.salt, verifier.salt);
        assert!(fresh.matches("pencil"));
    }
}
