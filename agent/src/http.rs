//! JSON-RPC over HTTP: `POST /rpc`, single or batch, served by the same dispatcher as
//! the AMQP queues.
//!
//! `GET /events?types=A,B*&filter=XPATH` streams matching events to a logged-in session
//! as Server-Sent Events (`event:` = type, `data:` = the event as one-line JSON), for
//! programs that cannot speak AMQP.
//!
//! `login(user, password)` — or a SASL exchange: `saslMechanisms()`, `saslStart`,
//! `saslStep` (see [`crate::sasl`]) — opens a session and sets the `clacks_session`
//! cookie (HttpOnly, SameSite=Strict, and Secure over HTTPS); `logout()` ends it.
//! JSON-RPC errors travel with HTTP 200, except 401 (no session, failed login), 413
//! (body or batch too large) and 429 (too many requests at once, or logins too fast).
//!
//! Nothing is given away before login ([`crate::http_limits`]): the session is checked
//! before the body is read; without one only a small body is read, and the first call
//! that needs a session ends the request with a short fixed 401. Requests in progress
//! are bounded per peer address and per session, batches in length, and failed logins
//! make the next one from that user or address wait longer each time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use clacks_core::dispatch::Dispatcher;
use clacks_core::rpc::{ErrorCode, Incoming, Params, Request, Response, RpcError, decode_request_body};
use serde_json::Value;
use tokio::time::Instant;

use crate::auth::Authenticator;
use crate::http_limits::{HttpLimits, InFlight, LoginThrottle};
use crate::sasl::{SaslServer, Step};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "clacks_session";

struct Session {
    user: String,
    last_used: Instant,
}

/// Shared state of the endpoint.
pub struct HttpState {
    dispatcher: Arc<Dispatcher>,
    events: Option<(clacks_core::bus::Bus, clacks_core::events::EventValidator)>,
    authenticator: Authenticator,
    sasl: Option<SaslServer>,
    sessions: Mutex<HashMap<String, Session>>,
    idle: Duration,
    max_body: usize,
    /// Cancelled when the server begins to stop: open event streams end with it, or a
    /// graceful stop would wait for clients that never hang up.
    stopping: tokio_util::sync::CancellationToken,
    limits: HttpLimits,
    in_flight: InFlight,
    logins: LoginThrottle,
    /// Served over HTTPS: the session cookie is `Secure`.
    tls: AtomicBool,
}

impl HttpState {
    /// State for an endpoint over `dispatcher`.
    pub fn new(dispatcher: Arc<Dispatcher>, authenticator: Authenticator, idle: Duration) -> Arc<HttpState> {
        HttpState::configured(dispatcher, None, authenticator, idle, HttpLimits::default())
    }

    /// State with every setting given: events served from a bus (with its validator)
    /// when `events` is set, and `limits`.
    pub fn configured(
        dispatcher: Arc<Dispatcher>,
        events: Option<(clacks_core::bus::Bus, clacks_core::events::EventValidator)>,
        authenticator: Authenticator,
        idle: Duration,
        limits: HttpLimits,
    ) -> Arc<HttpState> {
        let max_body = dispatcher.config().max_request_bytes;
        // Without SASL, `login` still works; say why once.
        let sasl =
            SaslServer::new(&authenticator).inspect_err(|e| tracing::warn!(error = %e, "SASL logins are off")).ok();
        Arc::new(HttpState {
            dispatcher,
            events,
            authenticator,
            sasl,
            sessions: Mutex::default(),
            idle,
            max_body,
            stopping: tokio_util::sync::CancellationToken::new(),
            limits,
            in_flight: InFlight::default(),
            logins: LoginThrottle::default(),
            tls: AtomicBool::new(false),
        })
    }

    /// State that also serves `GET /events` from `bus`, validated by `validator`.
    pub fn with_events(
        dispatcher: Arc<Dispatcher>,
        authenticator: Authenticator,
        idle: Duration,
        bus: clacks_core::bus::Bus,
        validator: clacks_core::events::EventValidator,
    ) -> Arc<HttpState> {
        HttpState::configured(dispatcher, Some((bus, validator)), authenticator, idle, HttpLimits::default())
    }

    fn session_user(&self, id: Option<&str>) -> Option<String> {
        let id = id?;
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.last_used) <= self.idle);
        let session = sessions.get_mut(id)?;
        session.last_used = now;
        Some(session.user.clone())
    }

    fn open_session(&self, user: &str) -> String {
        let id: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let session = Session { user: user.to_owned(), last_used: Instant::now() };
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone(), session);
        id
    }

    fn close_session(&self, id: Option<&str>) {
        if let Some(id) = id {
            self.sessions.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        }
    }
}

/// Serves the endpoint on `listener` until `shutdown` resolves; requests in progress
/// then finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = end_streams_on(&state, shutdown);
    let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).with_graceful_shutdown(shutdown).await
}

/// `shutdown`, ending the open event streams when it resolves.
fn end_streams_on(
    state: &HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let stopping = state.stopping.clone();
    async move {
        shutdown.await;
        stopping.cancel();
    }
}

/// The HTTPS settings from a certificate (chain) and key in PEM files; read at start,
/// so a missing or broken file stops the agent with the file's name rather than later.
pub async fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<axum_server::tls_rustls::RustlsConfig> {
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot use {} and {} for HTTPS: {e}", cert.display(), key.display()))
    })
}

/// Serves the same endpoint over HTTPS.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    state: Arc<HttpState>,
    config: axum_server::tls_rustls::RustlsConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // tokio and axum-server want a non-blocking listener.
    listener.set_nonblocking(true)?;
    state.tls.store(true, Ordering::Relaxed);
    let shutdown = end_streams_on(&state, shutdown);
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum_server::from_tcp_rustls(listener, config)?.handle(handle).serve(service).await
}

/// A self-signed certificate and its key (PEM) for `names` (host names or IP
/// addresses), valid from yesterday (clocks differ) for `days` days, for development and
/// tests: browsers and clients must be told to trust it.
pub fn self_signed_certificate(names: &[String], days: u32) -> Result<(String, String), String> {
    use chrono::Datelike;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    let date = |day: chrono::NaiveDate| rcgen::date_time_ymd(day.year(), day.month() as u8, day.day() as u8);
    let today = chrono::Utc::now().date_naive();
    params.not_before = date(today - chrono::Days::new(1));
    params.not_after = date(today + chrono::Days::new(u64::from(days.max(1))));
    params.distinguished_name.push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_default());
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The router serving `/rpc` and `/events`.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new().route("/rpc", post(rpc)).route("/events", axum::routing::get(events)).with_state(state)
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| cookie::Cookie::parse(pair.trim().to_owned()).ok())
        .find(|c| c.name() == SESSION_COOKIE)
        .map(|c| c.value().to_owned())
}

/// What handling one request did to the session.
#[derive(Default)]
struct Effects {
    new_session: Option<String>,
    logged_out: bool,
    /// A login failed: HTTP 401 with the JSON-RPC error.
    unauthorized: bool,
    /// A call needed a session and there was none: the request ends at once.
    needs_session: bool,
    /// Logins come too fast from this user or address: HTTP 429.
    throttled: Option<Duration>,
}

/// Who is asking, as far as the endpoint can tell before a password is checked.
struct Peer {
    /// The peer's address, for limits (`peer:ADDRESS`).
    key: String,
}

/// The one answer to a request that needs a session and has none: short and the same
/// every time, so an unauthenticated flood costs nothing to answer.
fn not_logged_in() -> HttpResponse {
    static BODY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let body = BODY.get_or_init(|| {
        let error = RpcError::new(
            ErrorCode::NOT_AUTHENTICATED,
            "not logged in or session expired; call login(user, password) first",
        );
        Response::error(Value::Null, error).to_bytes()
    });
    json_reply(StatusCode::UNAUTHORIZED, body.clone(), None)
}

/// Seconds to wait, rounded up: a client told "1" for 1.4 s would come back too early.
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

/// HTTP 429 with `error`, saying in `Retry-After` when to come back.
fn too_many(error: RpcError, retry_after: Duration) -> HttpResponse {
    let mut response = json_reply(StatusCode::TOO_MANY_REQUESTS, Response::error(Value::Null, error).to_bytes(), None);
    if let Ok(wait) = HeaderValue::from_str(&whole_seconds(retry_after).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, wait);
    }
    response
}

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

async fn rpc(State(state): State<Arc<HttpState>>, request: axum::extract::Request) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let address = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let peer = Peer { key: format!("peer:{}", address.map_or_else(|| "unknown".to_owned(), |a| a.to_string())) };
    let busy = |what: &str| {
        let error = RpcError::new(ErrorCode::TOO_MANY_REQUESTS, format!("too many requests in progress {what}"));
        too_many(error, Duration::from_secs(1))
    };
    let Some(_peer_pass) = state.in_flight.enter(peer.key.clone(), state.limits.per_peer) else {
        return busy("from this address");
    };
    // JSON-RPC travels as JSON: a form post or plain text is refused before anything is read.
    if !is_json(&parts.headers) {
        let error = RpcError::new(ErrorCode::INVALID_REQUEST, "POST /rpc takes Content-Type: application/json");
        return json_reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, Response::error(Value::Null, error).to_bytes(), None);
    }
    // The session first: without one only a login fits in what is read.
    let mut session = session_cookie(&parts.headers);
    let logged_in = state.session_user(session.as_deref()).is_some();
    let _session_pass = match (&session, logged_in) {
        (Some(id), true) => match state.in_flight.enter(format!("session:{id}"), state.limits.per_session) {
            Some(pass) => Some(pass),
            None => return busy("in this session"),
        },
        _ => None,
    };
    let limit = if logged_in { state.max_body } else { state.limits.unauthenticated_body.min(state.max_body) };
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) if !logged_in => return not_logged_in(),
        Err(_) => {
            let err = RpcError::new(
                ErrorCode::MESSAGE_TOO_LARGE,
                format!("request body exceeds the limit of {} bytes", state.max_body),
            );
            return json_reply(StatusCode::PAYLOAD_TOO_LARGE, Response::error(Value::Null, err).to_bytes(), None);
        }
    };
    let mut effects = Effects::default();
    let reply = match decode_request_body(&body) {
        Incoming::Single(Err(response)) => Some(response.to_bytes()),
        Incoming::Single(Ok(request)) => {
            handle(&state, &peer, request, &mut session, &mut effects).await.map(|r| r.to_bytes())
        }
        Incoming::Batch(entries) if entries.len() > state.limits.max_batch => {
            let err = RpcError::new(
                ErrorCode::MESSAGE_TOO_LARGE,
                format!("a batch holds at most {} calls; this one has {}", state.limits.max_batch, entries.len()),
            );
            return json_reply(StatusCode::PAYLOAD_TOO_LARGE, Response::error(Value::Null, err).to_bytes(), None);
        }
        Incoming::Batch(entries) => {
            // Sequential, so a `login` early in a batch authenticates the calls after it.
            let mut answers = Vec::new();
            for entry in entries {
                match entry {
                    Err(response) => answers.push(response),
                    Ok(request) => answers.extend(handle(&state, &peer, request, &mut session, &mut effects).await),
                }
                if effects.needs_session || effects.throttled.is_some() {
                    break;
                }
            }
            (!answers.is_empty()).then(|| serde_json::to_vec(&answers).unwrap_or_default())
        }
    };
    if effects.needs_session {
        return not_logged_in();
    }
    if let Some(wait) = effects.throttled {
        let error = RpcError::new(
            ErrorCode::LOGIN_THROTTLED,
            format!("too many failed logins; try again in {} s", whole_seconds(wait)),
        );
        return too_many(error, wait);
    }
    let status = if effects.unauthorized { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    let secure = if state.tls.load(Ordering::Relaxed) { "; Secure" } else { "" };
    let cookie = match (effects.new_session, effects.logged_out) {
        (Some(id), _) => Some(format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}")),
        (None, true) => Some(format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict{secure}; Max-Age=0")),
        _ => None,
    };
    match reply {
        Some(bytes) => json_reply(status, bytes, cookie),
        None => (StatusCode::NO_CONTENT, cookie_headers(cookie)).into_response(),
    }
}

async fn handle(
    state: &HttpState,
    peer: &Peer,
    request: Request,
    session: &mut Option<String>,
    effects: &mut Effects,
) -> Option<Response> {
    let id = request.id.clone();
    let outcome = match request.method.as_str() {
        "login" => login(state, peer, request.params, session, effects).await,
        "saslMechanisms" => Ok(Value::from(state.sasl.as_ref().map(|s| s.mechanisms().to_vec()).unwrap_or_default())),
        "saslStart" | "saslStep" => sasl(state, peer, &request.method, request.params, session, effects).await,
        "logout" => {
            state.close_session(session.as_deref());
            *session = None;
            effects.logged_out = true;
            Ok(Value::Bool(true))
        }
        _ => match state.session_user(session.as_deref()) {
            None => {
                effects.needs_session = true;
                return None;
            }
            Some(user) => {
                let origin = state.dispatcher.local_origin(Some(user), None);
                return state.dispatcher.handle_request(request, &origin).await;
            }
        },
    };
    let id = id?;
    Some(match outcome {
        Ok(v) => Response::result(id, v),
        Err(e) => Response::error(id, e),
    })
}

async fn login(
    state: &HttpState,
    peer: &Peer,
    params: Params,
    session: &mut Option<String>,
    effects: &mut Effects,
) -> Result<Value, RpcError> {
    let (user, password) = match params {
        Params::Positional(p) => (p.first().cloned(), p.get(1).cloned()),
        Params::Named(mut n) => (n.remove("user"), n.remove("password")),
        Params::None => (None, None),
    };
    let (Some(Value::String(user)), Some(Value::String(password))) = (user, password) else {
        return Err(RpcError::new(ErrorCode::INVALID_PARAMS, "login(user: string, password: string)"));
    };
    check_and_open(state, peer, &user, &password, "login", session, effects).await.map(|()| Value::Bool(true))
}

/// The throttling keys of a login attempt.
fn login_keys(peer: &Peer, user: &str) -> [String; 2] {
    [format!("user:{user}"), peer.key.clone()]
}

/// Whether logins of `user` from `peer` must wait; sets the effect when they must.
fn throttled(state: &HttpState, peer: &Peer, user: &str, effects: &mut Effects) -> bool {
    effects.throttled = state.logins.wait(&login_keys(peer, user), &state.limits);
    if let Some(wait) = effects.throttled {
        tracing::warn!(%user, peer = %peer.key, ?wait, "HTTP login refused: too many failures");
    }
    effects.throttled.is_some()
}

/// Records the outcome of a password or proof check for the throttle.
fn login_outcome(state: &HttpState, peer: &Peer, user: &str, accepted: bool) {
    let keys = login_keys(peer, user);
    if accepted { state.logins.succeeded(&keys) } else { state.logins.failed(&keys) }
}

/// Checks a password and, when it is right, opens a session for `user`.
async fn check_and_open(
    state: &HttpState,
    peer: &Peer,
    user: &str,
    password: &str,
    how: &str,
    session: &mut Option<String>,
    effects: &mut Effects,
) -> Result<(), RpcError> {
    if throttled(state, peer, user, effects) {
        return Err(RpcError::new(ErrorCode::LOGIN_THROTTLED, "too many failed logins"));
    }
    match state.authenticator.verify(user, password).await {
        Ok(true) => {
            login_outcome(state, peer, user, true);
            open(state, user, how, session, effects);
            Ok(())
        }
        Ok(false) => {
            login_outcome(state, peer, user, false);
            effects.unauthorized = true;
            tracing::warn!(%user, how, "HTTP login refused");
            Err(RpcError::new(ErrorCode::LOGIN_FAILED, format!("login of user '{user}' failed")))
        }
        Err(reason) => Err(RpcError::new(ErrorCode::INTERNAL_ERROR, reason)),
    }
}

fn open(state: &HttpState, user: &str, how: &str, session: &mut Option<String>, effects: &mut Effects) {
    state.close_session(session.as_deref());
    let id = state.open_session(user);
    *session = Some(id.clone());
    effects.new_session = Some(id);
    tracing::info!(%user, how, "HTTP login");
}

/// `saslStart(mechanism, data?)` and `saslStep(conversation, data?)`: one step each;
/// the last one opens the session.
async fn sasl(
    state: &HttpState,
    peer: &Peer,
    method: &str,
    params: Params,
    session: &mut Option<String>,
    effects: &mut Effects,
) -> Result<Value, RpcError> {
    let Some(server) = &state.sasl else {
        return Err(RpcError::new(ErrorCode::LOGIN_FAILED, "SASL is not available here; use login(user, password)"));
    };
    let first = if method == "saslStart" { "mechanism" } else { "conversation" };
    let (key, data) = match params {
        Params::Positional(p) => (p.first().cloned(), p.get(1).cloned()),
        Params::Named(mut n) => (n.remove(first), n.remove("data")),
        Params::None => (None, None),
    };
    let (Some(Value::String(key)), data @ (None | Some(Value::String(_)) | Some(Value::Null))) = (key, data) else {
        return Err(RpcError::new(
            ErrorCode::INVALID_PARAMS,
            format!("{method}({first}: string, data?: base64 string)"),
        ));
    };
    let data = data.as_ref().and_then(Value::as_str);
    // The user is known only once the exchange ends; until then the address decides.
    if let Some(wait) = state.logins.wait(std::slice::from_ref(&peer.key), &state.limits) {
        effects.throttled = Some(wait);
        return Err(RpcError::new(ErrorCode::LOGIN_THROTTLED, "too many failed logins"));
    }
    let step = if method == "saslStart" { server.start(&key, data) } else { server.step(&key, data) };
    match step {
        Ok(Step::Continue { conversation, data }) => {
            Ok(serde_json::json!({"done": false, "conversation": conversation, "data": crate::sasl::encode(&data)}))
        }
        Ok(Step::Finished { claim, data }) => {
            match &claim.password {
                Some(password) => {
                    check_and_open(state, peer, &claim.user, password, "SASL PLAIN", session, effects).await?
                }
                None => {
                    if throttled(state, peer, &claim.user, effects) {
                        return Err(RpcError::new(ErrorCode::LOGIN_THROTTLED, "too many failed logins"));
                    }
                    login_outcome(state, peer, &claim.user, true);
                    open(state, &claim.user, "SASL SCRAM", session, effects)
                }
            }
            Ok(serde_json::json!({"done": true, "user": claim.user, "data": crate::sasl::encode(&data)}))
        }
        Err(e) => {
            if e.symbolic() == ErrorCode::LOGIN_FAILED {
                state.logins.failed(std::slice::from_ref(&peer.key));
                effects.unauthorized = true;
                tracing::warn!(method, "SASL login refused: {}", e.message);
            }
            Err(e)
        }
    }
}

#[derive(serde::Deserialize)]
struct EventQuery {
    types: Option<String>,
    filter: Option<String>,
}

async fn events(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<EventQuery>,
) -> HttpResponse {
    let refuse =
        |status: StatusCode, error: RpcError| json_reply(status, Response::error(Value::Null, error).to_bytes(), None);
    let Some(user) = state.session_user(session_cookie(&headers).as_deref()) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            RpcError::new(ErrorCode::NOT_AUTHENTICATED, "log in with POST /rpc login(user, password) first"),
        );
    };
    let Some((bus, validator)) = &state.events else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            RpcError::new(ErrorCode::NO_PROVIDER, "this endpoint serves no events"),
        );
    };
    let types: Vec<String> = query
        .types
        .as_deref()
        .unwrap_or("*")
        .split(',')
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    // A type no schema here describes would never arrive: say so instead of waiting.
    let known = validator.types();
    if let Some(unknown) =
        types.iter().find(|pattern| !known.iter().any(|t| clacks_core::bus::type_matches(pattern, t)))
    {
        let error = RpcError::new(
            ErrorCode::INVALID_PARAMS,
            format!("no event type matches '{unknown}'; getEventTypes() lists them"),
        )
        .with_details(serde_json::json!({"param": "types"}));
        return refuse(StatusCode::BAD_REQUEST, error);
    }
    let filter = match query.filter.as_deref().filter(|f| !f.trim().is_empty()).map(clacks_core::events::Filter::parse)
    {
        None => None,
        Some(Ok(filter)) => Some(filter),
        Some(Err(e)) => {
            return refuse(StatusCode::BAD_REQUEST, RpcError::new(ErrorCode::EVENT_FILTER_INVALID, e.to_string()));
        }
    };
    let options = clacks_core::events::filter::SubscribeOptions::filtered(filter);
    let events = match clacks_core::events::filter::subscribe(bus, validator, &types, options).await {
        Ok(rx) => rx,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_rpc_error()),
    };
    // Each event reaches the session only with `e` on `<domain>.event.<Type>`; the
    // others are left out silently, as if not subscribed.
    let authorizer = state.dispatcher.config().authorizer.clone();
    let domain = state.dispatcher.config().domain.clone();
    let stream = futures_util::stream::unfold(events, move |mut events| {
        let (authorizer, domain, user) = (authorizer.clone(), domain.clone(), user.clone());
        async move {
            loop {
                let message = events.recv().await?;
                if let Some(authorizer) = &authorizer {
                    let topic = domain.event_topic(&message.event_type);
                    if authorizer.authorize(Some(&user), &topic, "e", None, &String::new).is_err() {
                        continue;
                    }
                }
                let data = clacks_core::events::event_json(&message.event_type, &message.body).to_string();
                let event = axum::response::sse::Event::default().event(message.event_type).data(data);
                return Some((Ok::<_, std::convert::Infallible>(event), events));
            }
        }
    });
    let stream = futures_util::StreamExt::take_until(stream, state.stopping.clone().cancelled_owned());
    axum::response::sse::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default()).into_response()
}

fn cookie_headers(cookie: Option<String>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, value);
    }
    headers
}

fn json_reply(status: StatusCode, body: Vec<u8>, cookie: Option<String>) -> HttpResponse {
    let mut headers = cookie_headers(cookie);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (status, headers, body).into_response()
}
