//! The in-process bus behind the embedded domain: named queues with round-robin
//! consumers, request/reply through oneshot channels, events through a broadcast
//! channel. Same semantics as the AMQP bus, without a broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{BusError, CallOptions, EventMessage, RequestHandler, RequestMessage, ServeOptions, type_matches};

struct Delivery {
    message: RequestMessage,
    reply: oneshot::Sender<Option<Vec<u8>>>,
}

#[derive(Default)]
struct Queue {
    consumers: Vec<mpsc::Sender<Delivery>>,
    next: usize,
}

#[derive(Default)]
struct Shared {
    queues: Mutex<HashMap<String, Queue>>,
}

/// An in-process bus. Every view made with [`LocalBus::view`] shares the queues and
/// events but has its own identity and its own set of served queues, like separate
/// connections to one broker.
#[derive(Clone)]
pub struct LocalBus {
    shared: Arc<Shared>,
    events: broadcast::Sender<EventMessage>,
    user: Arc<str>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus").field("user", &self.user).finish_non_exhaustive()
    }
}

impl LocalBus {
    /// A new, empty bus whose publications carry `user`.
    pub fn new(user: &str) -> LocalBus {
        let (events, _) = broadcast::channel(1024);
        LocalBus {
            shared: Arc::default(),
            events,
            user: Arc::from(user),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Another connection to the same bus, with its own identity.
    pub fn view(&self, user: &str) -> LocalBus {
        LocalBus {
            shared: self.shared.clone(),
            events: self.events.clone(),
            user: Arc::from(user),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    pub(crate) fn user(&self) -> &str {
        &self.user
    }

    pub(crate) async fn call(&self, queue: &str, body: Vec<u8>, options: CallOptions) -> Result<Vec<u8>, BusError> {
        let message = RequestMessage {
            body,
            user: Some(self.user.to_string()),
            on_behalf_of: options.on_behalf_of,
            deadline: Some(options.deadline),
            queue: queue.to_owned(),
            redelivered: false,
        };
        let (reply, rx) = oneshot::channel();
        let mut delivery = Delivery { message, reply };
        // Try consumers round-robin; a closed one (its agent stopped) is skipped.
        loop {
            let consumer = {
                let mut queues = self.queues().lock().unwrap_or_else(PoisonError::into_inner);
                let Some(q) = queues.get_mut(queue) else { return Err(BusError::NoProvider(queue.to_owned())) };
                q.consumers.retain(|c| !c.is_closed());
                if q.consumers.is_empty() {
                    return Err(BusError::NoProvider(queue.to_owned()));
                }
                q.next = (q.next + 1) % q.consumers.len();
                q.consumers[q.next].clone()
            };
            match consumer.send(delivery).await {
                Ok(()) => break,
                Err(mpsc::error::SendError(d)) => delivery = d,
            }
        }
        match tokio::time::timeout_at(options.deadline, rx).await {
            Ok(Ok(Some(reply))) => Ok(reply),
            Ok(Ok(None)) => Err(BusError::Refused("the request was a notification".into())),
            Ok(Err(_)) => Err(BusError::ConnectionLost("the serving agent stopped before replying".into())),
            Err(_) => Err(BusError::Timeout(String::new())),
        }
    }

    pub(crate) async fn serve(
        &self,
        queue: &str,
        options: ServeOptions,
        handler: RequestHandler,
    ) -> Result<(), BusError> {
        let (tx, mut rx) = mpsc::channel::<Delivery>(options.prefetch.max(1) as usize);
        {
            let mut queues = self.queues().lock().unwrap_or_else(PoisonError::into_inner);
            let q = queues.entry(queue.to_owned()).or_default();
            if options.private && q.consumers.iter().any(|c| !c.is_closed()) {
                return Err(BusError::InUse(format!("queue {queue} is already in exclusive use")));
            }
            q.consumers.push(tx);
        }
        let stop = self.stop.clone();
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = stop.cancelled() => break,
                    d = rx.recv() => match d { Some(d) => d, None => break },
                };
                let handler = handler.clone();
                tasks.spawn(async move {
                    let reply = handler(delivery.message).await;
                    let _ = delivery.reply.send(reply);
                });
            }
        });
        Ok(())
    }

    pub(crate) fn publish_event(&self, event_type: &str, xml: Vec<u8>) -> Result<(), BusError> {
        // No subscriber is not an error: events are fire-and-forget.
        let _ = self.events.send(EventMessage {
            event_type: event_type.to_owned(),
            body: xml,
            user: Some(self.user.to_string()),
        });
        Ok(())
    }

    pub(crate) fn subscribe(&self, types: &[String]) -> Result<mpsc::Receiver<EventMessage>, BusError> {
        let mut events = self.events.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        let types = types.to_vec();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if types.iter().any(|t| type_matches(t, &event.event_type)) && tx.send(event).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "event subscriber too slow; events dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(rx)
    }

    pub(crate) fn stop_serving(&self) {
        self.stop.cancel();
    }

    pub(crate) async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn queues(&self) -> &Mutex<HashMap<String, Queue>> {
        &self.shared.queues
    }
}
