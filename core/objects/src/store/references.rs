//! Open references: an object opened by a user, kept in the shared index database
//! between calls so any agent can continue it, owned by that user alone and forgotten
//! after an idle time.

use serde_json::Value;

use super::{ObjectError, ObjectState, ObjectStore, Result};
use clacks_core::rpc::ErrorCode;

impl ObjectStore {
    /// Opens an object for `user` and returns the reference and its view.
    pub async fn open_reference(&self, user: &str, state: ObjectState) -> Result<Value> {
        let reference = uuid::Uuid::new_v4().to_string();
        self.save_reference(&reference, user, &state).await?;
        Ok(self.view(&reference, &state))
    }

    pub async fn save_reference(&self, reference: &str, user: &str, state: &ObjectState) -> Result<()> {
        let text =
            serde_json::to_string(state).map_err(|e| ObjectError::new(ErrorCode::INTERNAL_ERROR, e.to_string()))?;
        self.index.save_ref(reference, user, &text).await?;
        Ok(())
    }

    /// The state behind a reference; only its owner gets it.
    pub async fn reference(&self, reference: &str, user: &str) -> Result<ObjectState> {
        let (owner, text) = self.index.load_ref(reference, self.idle_secs).await?.ok_or_else(|| gone(reference))?;
        if owner != user {
            return Err(gone(reference));
        }
        serde_json::from_str(&text)
            .map_err(|e| ObjectError::new(ErrorCode::INTERNAL_ERROR, format!("stored reference unreadable: {e}")))
    }

    /// Forgets a reference; only its owner may.
    pub async fn close_reference(&self, reference: &str, user: &str) -> Result<()> {
        if self.index.drop_ref(reference, user, self.idle_secs).await? { Ok(()) } else { Err(gone(reference)) }
    }

    /// Forgets references idle for longer than the configured time.
    pub async fn expire_references(&self) -> Result<u64> {
        Ok(self.index.expire_refs(self.idle_secs).await?)
    }
}

/// The same answer for a reference that never was, has expired, or is someone else's: a
/// reference is not a secret to probe for.
fn gone(reference: &str) -> ObjectError {
    ObjectError::new(
        ErrorCode::REFERENCE_NOT_FOUND,
        format!("no open object {} (closed, expired or never opened)", crate::filters::clip(reference)),
    )
}
