//! Password checks behind the HTTP `login` command.
//!
//! `broker`: the password is right when the broker accepts a connection with it — the
//! broker (and whatever it authenticates against, e.g. LDAP) stays the one source of
//! truth. `users`: argon2 hashes from `agent.toml`, for an agent without a broker.

use std::collections::BTreeMap;

use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::phc::PasswordHash;

/// How passwords are checked.
#[derive(Clone, Debug)]
pub enum Authenticator {
    /// Try to open a broker connection as the user.
    Broker {
        /// The agent's broker URL; its user and password are replaced.
        url: String,
        /// For `amqps://`: the CA certificates (PEM) of the broker.
        ca_pem: Option<String>,
    },
    /// Argon2 hashes per user.
    Users(BTreeMap<String, String>),
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
                let hash =
                    PasswordHash::new(stored).map_err(|e| format!("the stored hash of '{user}' is malformed: {e}"))?;
                Ok(argon2::Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
            }
            Authenticator::Broker { url, ca_pem } => {
                clacks_core::bus::amqp::check_login_with(url, user, password, ca_pem.as_deref())
                    .await
                    .map_err(|e| format!("cannot check the password with the broker: {e}"))
            }
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
    async fn local_users() {
        let hash = hash_password("s3cret").unwrap_or_default();
        let auth = Authenticator::Users(BTreeMap::from([("ada".to_owned(), hash)]));
        assert_eq!(auth.verify("ada", "s3cret").await, Ok(true));
        assert_eq!(auth.verify("ada", "wrong").await, Ok(false));
        assert_eq!(auth.verify("bob", "s3cret").await, Ok(false));
        assert_eq!(auth.verify("ada", "").await, Ok(false));
    }
}
