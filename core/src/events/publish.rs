//! Publishing events: every event is validated against the schemas before it reaches
//! the bus, so an invalid event is never published. Agents' `sendEvent` command and
//! plugins use the same [`EventPublisher`].

use serde_json::{Map, Value};

use super::{EventError, EventValidator};
use crate::bus::Bus;

/// Validates and publishes events on one bus.
#[derive(Clone, Debug)]
pub struct EventPublisher {
    bus: Bus,
    validator: EventValidator,
}

impl EventPublisher {
    /// A publisher on `bus` checking with `validator`.
    pub fn new(bus: Bus, validator: EventValidator) -> EventPublisher {
        EventPublisher { bus, validator }
    }

    /// The validator, for reloads and type listings.
    pub fn validator(&self) -> &EventValidator {
        &self.validator
    }

    /// Validates an event document and publishes it; returns its type.
    pub async fn publish(&self, xml: &[u8]) -> Result<String, EventError> {
        let event_type = self.validator.validate(xml).await?;
        self.bus.publish_event(&event_type, xml.to_vec()).await.map_err(|e| EventError::Publish(e.to_string()))?;
        Ok(event_type)
    }

    /// Builds an event of `event_type` from fields (in schema order), validates and
    /// publishes it.
    pub async fn publish_fields(&self, event_type: &str, fields: &Map<String, Value>) -> Result<String, EventError> {
        let xml = self.validator.build(event_type, fields);
        self.publish(xml.as_bytes()).await
    }
}
