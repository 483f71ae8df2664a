//! The server side of SASL logins over JSON-RPC: `saslMechanisms()`, then
//! `saslStart(mechanism, data)` and as many `saslStep(conversation, data)` as the
//! mechanism needs, `data` in base64.
//!
//! PLAIN hands the user and password to the [`Authenticator`] (so the broker, the
//! directory or the local users decide, as for `login`); SCRAM-SHA-256 is offered when
//! the local users hold SCRAM verifiers and never sees a password. A conversation lives
//! only between its steps: at most [`MAX_CONVERSATIONS`] at once, each for
//! [`CONVERSATION_TTL`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clacks_core::rpc::{ErrorCode, RpcError};
use clacks_core::sasl::{PLAIN, SCRAM_SHA_256, ScramVerifier};
use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechname::Mechname;
use rsasl::prelude::{SASLConfig, SASLServer, Session, SessionError, State};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, Validation, ValidationError};
use tokio::time::Instant;

use crate::auth::Authenticator;

/// How long a started conversation waits for its next step.
pub const CONVERSATION_TTL: Duration = Duration::from_secs(60);
/// Conversations in progress at most; more are refused until some finish or expire.
pub const MAX_CONVERSATIONS: usize = 1024;

/// Who a finished exchange names: for PLAIN with the password still to check.
#[derive(Debug)]
pub struct Claim {
    pub user: String,
    pub password: Option<String>,
}

struct Login;
impl Validation for Login {
    type Value = Claim;
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

/// Hands SCRAM its stored keys and turns a finished exchange into a [`Claim`].
struct Callback {
    scram: BTreeMap<String, ScramVerifier>,
}

impl SessionCallback for Callback {
    fn callback(&self, _: &SessionData, context: &Context, request: &mut Request) -> Result<(), SessionError> {
        if let Some(verifier) = context.get_ref::<AuthId>().and_then(|user| self.scram.get(user)) {
            request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
                verifier.iterations,
                &verifier.salt,
                &verifier.stored_key,
                &verifier.server_key,
            ))?;
        }
        Ok(())
    }

    fn validate(
        &self,
        data: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let mechanism = data.mechanism().mechanism.as_str().to_owned();
        validate.with::<Login, _>(|| {
            let user = context.get_ref::<AuthId>().unwrap_or_default().to_owned();
            // Acting for someone else (an authorization id) is not offered.
            if context.get_ref::<AuthzId>().is_some_and(|z| !z.is_empty() && z != user) {
                return Err(ValidationError::Boxed(Box::new(Refusal("authorization ids are not supported".into()))));
            }
            let password = match mechanism.as_str() {
                PLAIN => {
                    let raw = context.get_ref::<Password>().unwrap_or_default();
                    Some(String::from_utf8_lossy(raw).into_owned())
                }
                // SCRAM reached validation only with a correct proof.
                _ => None,
            };
            Ok(Claim { user, password })
        })?;
        Ok(())
    }
}

/// How one step ended.
pub enum Step {
    /// Send `data` back and wait for the next step of `conversation`.
    Continue { conversation: String, data: Vec<u8> },
    /// The exchange is over; the claim still has to be accepted (PLAIN: checked).
    Finished { claim: Claim, data: Vec<u8> },
}

/// The user a SCRAM client-first message names (`n,,n=<user>,r=…`), unescaped.
fn scram_user(first: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(first).ok()?;
    let user = text.split(',').nth(2)?.strip_prefix("n=")?;
    Some(user.replace("=2C", ",").replace("=3D", "="))
}

/// The mechanisms and the conversations in progress.
pub struct SaslServer {
    config: Arc<SASLConfig>,
    offered: Vec<&'static str>,
    /// Who has SCRAM credentials: others are told to use PLAIN instead.
    scram_users: std::collections::BTreeSet<String>,
    conversations: Mutex<HashMap<String, (Instant, Session<Login>)>>,
}

fn failed(message: impl Into<String>) -> RpcError {
    RpcError::new(ErrorCode::LOGIN_FAILED, message)
}

impl SaslServer {
    pub fn new(authenticator: &Authenticator) -> Result<SaslServer, String> {
        let scram = authenticator.scram_verifiers();
        let scram_users = scram.keys().cloned().collect();
        let offered = if scram.is_empty() { vec![PLAIN] } else { vec![SCRAM_SHA_256, PLAIN] };
        let config = SASLConfig::builder()
            .with_defaults()
            .with_callback(Callback { scram })
            .map_err(|e| format!("SASL cannot be set up: {e}"))?;
        Ok(SaslServer { config, offered, scram_users, conversations: Mutex::default() })
    }

    /// The mechanisms offered, preferred first.
    pub fn mechanisms(&self) -> &[&'static str] {
        &self.offered
    }

    /// Starts an exchange with the client's first message (empty when it has none).
    pub fn start(&self, mechanism: &str, data: Option<&str>) -> Result<Step, RpcError> {
        if !self.offered.contains(&mechanism) {
            // A login that cannot happen is a failed login (401, counted), whatever the reason.
            return Err(failed(format!(
                "mechanism '{mechanism}' is not offered; offered: {}",
                self.offered.join(", ")
            ))
            .with_details(serde_json::json!({"offered": self.offered})));
        }
        // SCRAM needs a stored verifier; a user with only a password hash is sent to
        // PLAIN rather than failed, so one list of mechanisms serves both kinds.
        if mechanism == SCRAM_SHA_256 {
            let first = data.and_then(|d| B64.decode(d).ok()).unwrap_or_default();
            if let Some(user) = scram_user(&first).filter(|u| !self.scram_users.contains(u)) {
                return Err(failed(format!("'{user}' has no SCRAM credentials here; log in with PLAIN"))
                    .with_details(serde_json::json!({"use": PLAIN})));
            }
        }
        let name = Mechname::parse(mechanism.as_bytes()).map_err(|e| failed(e.to_string()))?;
        let session = SASLServer::<Login>::new(self.config.clone())
            .start_suggested(name)
            .map_err(|e| failed(format!("cannot start {mechanism}: {e}")))?;
        self.advance(session, data)
    }

    /// Continues `conversation` with the client's next message.
    pub fn step(&self, conversation: &str, data: Option<&str>) -> Result<Step, RpcError> {
        let session = {
            let mut all = self.conversations.lock().unwrap_or_else(PoisonError::into_inner);
            all.retain(|_, (started, _)| started.elapsed() < CONVERSATION_TTL);
            all.remove(conversation)
        };
        let Some((_, session)) = session else {
            return Err(failed("no such SASL conversation (finished, failed or expired); call saslStart again"));
        };
        self.advance(session, data)
    }

    fn advance(&self, mut session: Session<Login>, data: Option<&str>) -> Result<Step, RpcError> {
        let input = match data.filter(|d| !d.is_empty()) {
            Some(text) => Some(B64.decode(text).map_err(|e| failed(format!("data is not base64: {e}")))?),
            None => None,
        };
        let mut out = Vec::new();
        let state = session.step(input.as_deref(), &mut out).map_err(|e| failed(format!("SASL: {e}")))?;
        match state {
            State::Running => {
                let conversation: String = (0..16).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
                let mut all = self.conversations.lock().unwrap_or_else(PoisonError::into_inner);
                all.retain(|_, (started, _)| started.elapsed() < CONVERSATION_TTL);
                if all.len() >= MAX_CONVERSATIONS {
                    return Err(failed("too many SASL logins are in progress; try again in a minute"));
                }
                all.insert(conversation.clone(), (Instant::now(), session));
                Ok(Step::Continue { conversation, data: out })
            }
            State::Finished(_) => match session.validation() {
                Some(claim) => Ok(Step::Finished { claim, data: out }),
                None => Err(failed("authentication failed")),
            },
        }
    }
}

/// Base64 for a reply's `data`.
pub fn encode(data: &[u8]) -> String {
    B64.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scram_user_is_read_from_the_first_message() {
        assert_eq!(scram_user(b"n,,n=ada,r=abc").as_deref(), Some("ada"));
        assert_eq!(scram_user(b"n,,n=a=2Cb=3Dc,r=abc").as_deref(), Some("a,b=c"));
        assert_eq!(scram_user(b"garbage"), None);
    }
}
