//! The forwarder: routes a request by host and passes it to the host's upstream.
//!
//! Only configured hosts are served; trackproxy is never an open proxy. The path and query go to
//! the upstream byte for byte (tracking tokens are opaque: never decoded or re-encoded), `Host`
//! keeps the branded name, bodies stream both ways, and redirects are passed back, never
//! followed.
//!
//! - [`body`]: the body of every response trackproxy sends (the upstream's, or a local one).
//! - `headers`: host of a request, hop-by-hop and `X-Forwarded-*` rules.
//! - [`local`]: answers trackproxy gives itself (ACME HTTP-01, the redirect to HTTPS, short
//!   error bodies).
//! - [`files`]: the app-link files a host serves itself (`[[hosts]] files`).
//! - [`rules`]: a host's ESP rules and hygiene (methods, `paths`, cookies, header limit).
//! - [`upstream`]: the pooled client.

pub(crate) mod body;
pub(crate) mod files;
pub(crate) mod headers;
pub(crate) mod local;
pub(crate) mod rules;
pub(crate) mod upstream;

pub(crate) use body::{ForwardBody, UpstreamBody, UpstreamTiming};
pub(crate) use local::local_response;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::client::ConnInfo;
use crate::config::{Config, HttpMode, UpstreamUrl};
use crate::error::ProxyError;
use crate::tls::SniResolver;
use files::AppFiles;
use rules::HostRules;
use upstream::{BodyFault, RequestBody, ResponseFuture, UpstreamClient};

/// Where one branded host's requests go.
#[derive(Debug, Clone)]
pub struct Route {
    /// The upstream origin.
    pub upstream: UpstreamUrl,
    /// The host's ESP rules and hygiene.
    pub rules: HostRules,
}

/// Configured hosts (lower case) → route. Swapped whole on reload.
#[derive(Debug, Default)]
pub struct Routes {
    by_host: HashMap<String, Route>,
}

impl Routes {
    /// The routes of `cfg`.
    #[must_use]
    pub fn from_config(cfg: &Config) -> Self {
        Routes {
            by_host: cfg
                .hosts
                .iter()
                .map(|h| {
                    (
                        h.name.clone(),
                        Route {
                            upstream: h.upstream.clone(),
                            rules: HostRules::of(h),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The route for a host name (lower case).
    #[must_use]
    pub fn get(&self, host: &str) -> Option<&Route> {
        self.by_host.get(host)
    }
}

/// Settings of the forwarder that can change on reload.
#[derive(Debug)]
pub(crate) struct ForwardSettings {
    /// Routes by host.
    pub routes: Routes,
    /// Plain-HTTP behaviour.
    pub http_mode: HttpMode,
    /// Limit from sending the request to the response head.
    pub response_timeout: Duration,
    /// App-link files served locally, by host.
    pub files: AppFiles,
    /// `server.max_header_bytes` and `server.max_headers`, checked here for HTTP/2 requests
    /// (hyper's HTTP/1 parser enforces them itself).
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl ForwardSettings {
    /// The settings of `cfg`, with its app-link files as read by [`AppFiles::load`].
    #[must_use]
    pub(crate) fn from_config(cfg: &Config, files: AppFiles) -> Self {
        ForwardSettings {
            routes: Routes::from_config(cfg),
            http_mode: cfg.server.http_mode,
            response_timeout: cfg.upstream.response_timeout,
            files,
            max_header_bytes: cfg.server.max_header_bytes,
            max_headers: cfg.server.max_headers,
        }
    }
}

/// The innermost tower service: forwards one request.
#[derive(Clone)]
pub(crate) struct Forward {
    shared: Arc<Shared>,
}

struct Shared {
    settings: ArcSwap<ForwardSettings>,
    client: UpstreamClient,
    upstream_connections: Arc<AtomicU64>,
    /// Answers ACME HTTP-01 challenges for the hosts that get their certificate over ACME.
    acme: Arc<SniResolver>,
}

impl Forward {
    /// A forwarder with `settings`, sending through `client`; ACME HTTP-01 challenges of the
    /// hosts in `acme` are answered locally.
    #[must_use]
    pub(crate) fn new(
        settings: ForwardSettings,
        client: UpstreamClient,
        upstream_connections: Arc<AtomicU64>,
        acme: Arc<SniResolver>,
    ) -> Self {
        Forward {
            shared: Arc::new(Shared {
                settings: ArcSwap::from_pointee(settings),
                client,
                upstream_connections,
                acme,
            }),
        }
    }

    /// Replaces routes and settings; requests in flight finish with the old ones.
    pub(crate) fn reload(&self, settings: ForwardSettings) {
        self.shared.settings.store(Arc::new(settings));
    }

    /// Upstream connections opened so far.
    #[must_use]
    pub(crate) fn upstream_connections(&self) -> u64 {
        self.shared.upstream_connections.load(Ordering::Relaxed)
    }
}

impl tower::Service<Request<Incoming>> for Forward {
    type Response = Response<ForwardBody>;
    type Error = ProxyError;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let state = match self.shared.prepare(req) {
            Ok(Prepared::Local(res)) => State::Done {
                result: Some(Ok(res)),
            },
            Ok(Prepared::Pending(fut)) => State::Pending { fut },
            Err(e) => State::Done {
                result: Some(Err(e)),
            },
            Ok(Prepared::Upstream {
                req,
                fault,
                upstream,
                response_timeout,
            }) => State::Sending {
                started: Instant::now(),
                sent: tokio::time::timeout(response_timeout, self.shared.client.request(req)),
                fault,
                upstream,
                response_timeout,
            },
        };
        ForwardFuture { state }
    }
}

type LocalFuture = Pin<Box<dyn Future<Output = Response<ForwardBody>> + Send>>;

/// What the synchronous part of forwarding decided.
enum Prepared {
    /// Answered here (ACME challenge, redirect to HTTPS).
    Local(Response<ForwardBody>),
    /// Answered here once the shared ACME store has answered (an HTTP-01 challenge another
    /// replica's order may be waiting for).
    Pending(LocalFuture),
    /// To be sent to `upstream`.
    Upstream {
        req: Request<RequestBody>,
        /// Where the request body's read error lands, if it has a body.
        fault: Option<BodyFault>,
        upstream: UpstreamUrl,
        response_timeout: Duration,
    },
}

pin_project! {
    /// Response future of [`Forward`]: a concrete type rather than a boxed `async` block, so
    /// a request costs no allocation for it.
    pub struct ForwardFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        // Answered or failed before anything was sent.
        Done { result: Option<Result<Response<ForwardBody>, ProxyError>> },
        // Answered here after a look-up (shared ACME store).
        Pending { fut: LocalFuture },
        // Waiting for the upstream's response head.
        Sending {
            started: Instant,
            #[pin]
            sent: tokio::time::Timeout<ResponseFuture>,
            fault: Option<BodyFault>,
            upstream: UpstreamUrl,
            response_timeout: Duration,
        },
    }
}

impl Future for ForwardFuture {
    type Output = Result<Response<ForwardBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Done { result } => Poll::Ready(result.take().unwrap_or(Err(
                ProxyError::BadRequest("future polled after completion"),
            ))),
            StateProj::Pending { fut } => fut.as_mut().poll(cx).map(Ok),
            StateProj::Sending {
                started,
                sent,
                fault,
                upstream,
                response_timeout,
            } => Poll::Ready(match ready!(sent.poll(cx)) {
                // The request failed because reading its body from the client did (the
                // upstream client only says its body failed): the client's fault.
                Ok(Err(_)) | Err(_)
                    if let Some(e) = fault.as_ref().and_then(|f| {
                        f.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .take()
                    }) =>
                {
                    Err(ProxyError::from_client_body(e))
                }
                Err(_) => Err(ProxyError::UpstreamTimeout {
                    upstream: upstream.to_string(),
                    after: *response_timeout,
                }),
                Ok(Err(source)) if source.is_connect() => Err(ProxyError::UpstreamConnect {
                    upstream: upstream.to_string(),
                    source,
                }),
                Ok(Err(source)) => Err(ProxyError::UpstreamRequest {
                    upstream: upstream.to_string(),
                    source,
                }),
                Ok(Ok(mut res)) => {
                    let timing = started.elapsed();
                    headers::prepare_response(res.headers_mut());
                    Ok(res.map(|body| Either::Left(UpstreamBody::new(body, timing))))
                }
            }),
        }
    }
}

impl Shared {
    /// Everything before the upstream: checks, routing, local answers, the request as the
    /// upstream gets it.
    fn prepare(&self, req: Request<Incoming>) -> Result<Prepared, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed(Method::CONNECT));
        }
        let Some(conn) = req.extensions().get::<ConnInfo>() else {
            return Err(ProxyError::BadRequest("no connection information"));
        };
        let settings = self.settings.load();
        if req.version() == Version::HTTP_2
            && headers::over_limits(&req, settings.max_header_bytes, settings.max_headers)
        {
            return Err(ProxyError::HeadersTooLarge);
        }
        if headers::has_other_transfer_coding(req.headers()) {
            return Err(ProxyError::UnsupportedTransferCoding);
        }
        let tls = conn.tls.is_some();
        let target = headers::target(&req, tls)?;
        let Some(route) = settings.routes.get(target.name()) else {
            return Err(ProxyError::UnknownHost {
                host: target.name().to_owned(),
                tls,
            });
        };
        if let Some(t) = &conn.tls {
            // RFC 9110 §15.5.20: the connection was set up for another host.
            if *t.sni != *target.name() {
                return Err(ProxyError::Misdirected {
                    host: target.name().to_owned(),
                    sni: t.sni.to_string(),
                });
            }
        }
        let pq = match req.uri().path_and_query() {
            Some(pq) if pq.as_str() == "*" => {
                return Err(ProxyError::BadRequest("asterisk-form request target"));
            }
            Some(pq) => pq.clone(),
            None => PathAndQuery::from_static("/"),
        };
        // RFC 8555 §8.3: the CA fetches http://<host>/.well-known/acme-challenge/<token> on
        // port 80. For ACME hosts it is answered here, before any redirect, and never forwarded.
        if !tls
            && let Some(token) = pq.path().strip_prefix(local::ACME_CHALLENGE_PREFIX)
            && let Some(answer) = self.acme.http01(target.name(), token)
        {
            // No local answer: with a shared store, the order may be another replica's.
            if answer.is_none()
                && let Some(shared) = self.acme.shared_challenges()
            {
                let host = target.name().to_owned();
                let token = token.to_owned();
                return Ok(Prepared::Pending(Box::pin(async move {
                    let answer = shared.http01(&host, &token).await;
                    local::http01_response(&host, answer)
                })));
            }
            return Ok(Prepared::Local(local::http01_response(
                target.name(),
                answer,
            )));
        }
        // App-link files: answered here on HTTPS and plain HTTP, before any redirect (Android's
        // verification fails on one), never forwarded.
        if let Some(res) = settings
            .files
            .answer(target.name(), req.method(), pq.path())
        {
            return Ok(Prepared::Local(res));
        }
        if !tls && settings.http_mode == HttpMode::Redirect && route.rules.may_redirect() {
            return Ok(Prepared::Local(local::redirect_to_https(
                &target.host_header,
                &pq,
            )));
        }
        if let Some(res) = route.rules.admit(target.name(), req.method(), pq.path())? {
            return Ok(Prepared::Local(res));
        }
        let forwarding = headers::Forwarding {
            client: conn.remote.ip(),
            // The address that sent us this HTTP request: the load balancer for an L7 one,
            // the real client behind an L4 one that spoke PROXY protocol.
            peer_trusted: conn.remote_trusted,
            proto: if tls { "https" } else { "http" },
            host: &target.host_header,
        };

        let upstream = route.upstream.clone();
        let (mut parts, body) = req.into_parts();
        let (body, fault) = RequestBody::new(body);
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(upstream.scheme.clone());
        uri.authority = Some(upstream.authority.clone());
        uri.path_and_query = Some(pq);
        parts.uri = Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("request target"))?;
        parts.version = Version::HTTP_11;
        headers::prepare_request(&mut parts.headers, &forwarding);
        if let Some(res) = route.rules.apply(target.name(), &mut parts.headers) {
            return Ok(Prepared::Local(res));
        }
        parts.extensions = http::Extensions::new();
        Ok(Prepared::Upstream {
            req: Request::from_parts(parts, body),
            fault,
            upstream,
            response_timeout: settings.response_timeout,
        })
    }
}
