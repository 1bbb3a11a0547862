//! The HTTP surface: one filter per endpoint, composed with `.or()`, rejections turned into
//! JSON in one `recover`, and everything wrapped by the instrumentation.
//!
//! Each route matches its path before its method, so a wrong method on a known path is a 405
//! while any method on an unknown path is a 404.

use std::convert::Infallible;

use warp::http::StatusCode;
use warp::reject::MethodNotAllowed;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::context::Shared;
use crate::handlers::{self, Query};
use crate::instrument::instrumented;

/// Every route, answered and measured; never rejects.
pub fn app(ctx: Shared) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let routes = index()
        .or(health(ctx.clone()))
        .unify()
        .or(metrics(ctx.clone()))
        .unify()
        .or(api_data(ctx.clone()))
        .unify()
        .or(api_random())
        .unify()
        .or(api_error())
        .unify()
        .recover(handle_rejection)
        .unify();
    instrumented(ctx, routes)
}

pub fn index() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end().and(warp::get()).map(handlers::index)
}

pub fn health(ctx: Shared) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("health")
        .and(warp::get())
        .and(with_ctx(ctx))
        .map(handlers::health)
}

pub fn metrics(ctx: Shared) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_ctx(ctx))
        .map(handlers::metrics)
}

pub fn api_data(ctx: Shared) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "data")
        .and(warp::get())
        .and(query())
        .and(with_ctx(ctx))
        .then(handlers::api_data)
}

pub fn api_random() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "random")
        .and(warp::get())
        .and(query())
        .map(handlers::api_random)
}

pub fn api_error() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "error")
        .and(warp::get())
        .and(query())
        .map(handlers::api_error)
}

/// The raw query parameters; decoding into a string map cannot fail, so validation (and
/// its error messages naming the parameter) is left to the handlers.
fn query() -> impl Filter<Extract = (Query,), Error = Rejection> + Clone {
    warp::query::<Query>()
}

fn with_ctx(ctx: Shared) -> impl Filter<Extract = (Shared,), Error = Infallible> + Clone {
    warp::any().map(move || ctx.clone())
}

/// Turns what no route accepted into a JSON 404, 405 or (should warp reject for any other
/// reason) 400.
async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let response = if rejection.find::<MethodNotAllowed>().is_some() {
        handlers::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; this endpoint answers GET",
        )
    } else if rejection.is_not_found() {
        handlers::error_response(StatusCode::NOT_FOUND, "no such endpoint; GET / lists them")
    } else {
        handlers::error_response(
            StatusCode::BAD_REQUEST,
            "the request could not be understood",
        )
    };
    Ok(response)
}
