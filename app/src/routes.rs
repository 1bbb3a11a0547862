//! The HTTP surface: one warp filter extracts what every request needs, and one `match` on
//! the route table ([`Endpoint`]) picks the handler.
//!
//! The route table is the one the metrics labels and log fields come from, so a route and
//! its label cannot disagree. Dispatching on it also means a request costs one table
//! lookup, instead of a chain of filters that each reject it until one matches (that chain
//! was a measurable share of the benchmark's per-request overhead).
//!
//! A known path with a method other than GET is a 405; any method on an unknown path is a
//! 404.

use std::convert::Infallible;
use std::net::SocketAddr;

use futures_util::future::{self, Either};
use warp::http::header::{HeaderValue, ALLOW};
use warp::http::{Method, StatusCode};
use warp::path::FullPath;
use warp::reply::Response;
use warp::Filter;

use crate::context::{AppContext, Shared};
use crate::handlers::{self, Answer, Query};
use crate::instrument::RequestScope;
use crate::labels::Endpoint;

/// Every route, answered and measured; never rejects.
pub fn app(ctx: Shared) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(query())
        .and(warp::addr::remote())
        .then(
            move |method: Method,
                  path: FullPath,
                  query: Option<Query>,
                  peer: Option<SocketAddr>| {
                let endpoint = Endpoint::from_path(path.as_str());
                let scope = RequestScope::begin(&ctx, method, path, peer);
                match respond(&ctx, endpoint, scope.method(), query) {
                    Answer::Now(response) => {
                        Either::Left(future::ready(scope.finish(&ctx, endpoint, response)))
                    }
                    Answer::After { delay, respond } => {
                        let ctx = ctx.clone();
                        Either::Right(Box::pin(async move {
                            tokio::time::sleep(delay).await;
                            scope.finish(&ctx, endpoint, respond())
                        }))
                    }
                }
            },
        )
}

/// The answer for one request, from the route it maps to.
fn respond(ctx: &AppContext, endpoint: Endpoint, method: &Method, query: Option<Query>) -> Answer {
    let response = match (endpoint, query) {
        (Endpoint::Unmatched, _) => {
            handlers::error_response(StatusCode::NOT_FOUND, "no such endpoint; GET / lists them")
        }
        _ if method != Method::GET => method_not_allowed(),
        (Endpoint::Index, _) => handlers::index(),
        (Endpoint::Health, _) => handlers::health(ctx),
        (Endpoint::Metrics, _) => handlers::metrics(ctx),
        (Endpoint::ApiData | Endpoint::ApiRandom | Endpoint::ApiError, None) => undecodable_query(),
        (Endpoint::ApiData, Some(query)) => return handlers::api_data(&query, ctx),
        (Endpoint::ApiRandom, Some(query)) => handlers::api_random(&query),
        (Endpoint::ApiError, Some(query)) => handlers::api_error(&query),
    };
    Answer::Now(response)
}

/// A 405 that says, as HTTP requires, which method the route does answer: every route
/// answers GET only.
fn method_not_allowed() -> Response {
    let mut response = handlers::error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed; this endpoint answers GET",
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET"));
    response
}

/// The query parameters, or `None` if the query string cannot be decoded (the routes that
/// read parameters answer that with a 400). Unknown parameters are kept and ignored, so
/// validation, and its messages naming the parameter, stays with the handlers.
fn query() -> impl Filter<Extract = (Option<Query>,), Error = Infallible> + Clone {
    warp::query::<Query>()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// A 400 for a query string that is not `application/x-www-form-urlencoded`.
fn undecodable_query() -> Response {
    handlers::error_response(
        StatusCode::BAD_REQUEST,
        "the query string could not be decoded; send name=value pairs joined by &",
    )
}
