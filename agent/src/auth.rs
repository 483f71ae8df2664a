//! Password checks behind the HTTP logins (`login` and SASL PLAIN), and the stored SCRAM
//! verifiers behind SASL SCRAM-SHA-256.
//!
//! `broker`: the password is right when the broker accepts a connection with it — the
//! broker (and whatever it authenticates against, e.g. LDAP) stays the one source of
//! truth. `directory`: the agent binds to the directory as the user (without a
//! directory: the user object's stored `userPassword` hash). `users`: hashes from
//! `agent.toml` — argon2, or SCRAM-SHA-256 verifiers, which also allow SCRAM logins.

use std::collections::BTreeMap;
use std::sync::Arc;

use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::phc::PasswordHash;
use clacks_core::sasl::ScramVerifier;
use clacks_objects::ObjectStore;

/// How passwords are checked.
#[derive(Clone)]
pub enum Authenticator {
    /// Try to open a broker connection as the user.
    Broker {
        /// The agent's broker URL; its user and password are replaced.
        url: String,
        /// For `amqps://`: the CA certificates (PEM) of the broker.
        ca_pem: Option<String>,
    },
    /// Bind to the directory as the user (or check the stored hash without one).
    Directory(Arc<ObjectStore>),
    /// Argon2 hashes or SCRAM-SHA-256 verifiers per user.
    Users(BTreeMap<String, String>),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names the kind only: URLs may carry credentials, the map holds hashes.
        f.write_str(match self {
            Authenticator::Broker { .. } => "Authenticator::Broker",
            Authenticator::Directory(_) => "Authenticator::Directory",
            Authenticator::Users(_) => "Authenticator::Users",
        })
    }
}

impl Authenticator {
    /// Whether `password` is right for `user`. Errors are for "could not check" (broker
    /// down), not for a wrong password.
    pub async fn verify(&self, user: &str, password: &str) -> Result<bool, String> {
        if user.is_empty() || password.is_empty() {
            return Ok(false);
        }
        match self {
            Authenticator::Users(users) => {
                let Some(stored) = users.get(user) else { return Ok(false) };
                if let Some(verifier) = ScramVerifier::parse(stored) {
                    return Ok(verifier.matches(password));
                }
                let hash =
                    PasswordHash::new(stored).map_err(|e| format!("the stored hash of '{user}' is malformed: {e}"))?;
                Ok(argon2::Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
            }
            Authenticator::Broker { url, ca_pem } => {
                clacks_core::bus::amqp::check_login_with(url, user, password, ca_pem.as_deref())
                    .await
                    .map_err(|e| format!("cannot check the password with the broker: {e}"))
            }
            Authenticator::Directory(store) => store
                .check_user_password(user, password)
                .await
                .map_err(|e| format!("cannot check the password with the directory: {e}")),
        }
    }

    /// The SCRAM-SHA-256 verifiers this authenticator holds, by user: SCRAM needs them,
    /// a password check cannot stand in.
    pub fn scram_verifiers(&self) -> BTreeMap<String, ScramVerifier> {
        match self {
            Authenticator::Users(users) => {
                users.iter().filter_map(|(user, stored)| Some((user.clone(), ScramVerifier::parse(stored)?))).collect()
            }
            _ => BTreeMap::new(),
        }
    }
}

/// An argon2 PHC hash of `password`, for `[http.users]`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_users_with_argon2_hashes_and_scram_verifiers() {
        let hash = hash_password("s3cret").unwrap_or_default();
        let scram = ScramVerifier::new("pencil", 4096).to_string();
        let auth = Authenticator::Users(BTreeMap::from([("ada".to_owned(), hash), ("bob".to_owned(), scram)]));
        assert_eq!(auth.verify("ada", "s3cret").await, Ok(true));
        assert_eq!(auth.verify("ada", "wrong").await, Ok(false));
        assert_eq!(auth.verify("bob", "s3cret").await, Ok(false));
        assert_eq!(auth.verify("bob", "pencil").await, Ok(true));
        assert_eq!(auth.verify("carol", "pencil").await, Ok(false));
        assert_eq!(auth.verify("ada", "").await, Ok(false));
        assert_eq!(auth.scram_verifiers().keys().collect::<Vec<_>>(), ["bob"]);
    }
}
