//! The bounded label values used by metrics and logs.
//!
//! Every request maps to one [`Endpoint`] and one [`MethodLabel`], both closed sets, so
//! no client can create new time series by inventing paths or methods.

/// The app's routes, plus one value for every path that matches none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Index,
    Health,
    Metrics,
    ApiData,
    ApiRandom,
    ApiError,
    /// Any path that is not one of the routes above.
    Unmatched,
}

impl Endpoint {
    /// The served routes, in the order `/` lists them.
    pub const ROUTES: [Endpoint; 6] = [
        Endpoint::Index,
        Endpoint::Health,
        Endpoint::Metrics,
        Endpoint::ApiData,
        Endpoint::ApiRandom,
        Endpoint::ApiError,
    ];
    /// How many distinct values exist (routes plus `Unmatched`), for lookup tables.
    pub const COUNT: usize = Self::ROUTES.len() + 1;

    /// The request path this route serves.
    pub fn path(self) -> Option<&'static str> {
        Some(match self {
            Endpoint::Index => "/",
            Endpoint::Health => "/health",
            Endpoint::Metrics => "/metrics",
            Endpoint::ApiData => "/api/data",
            Endpoint::ApiRandom => "/api/random",
            Endpoint::ApiError => "/api/error",
            Endpoint::Unmatched => return None,
        })
    }

    /// The value of the `endpoint` label and the log's `route` field.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Index => "index",
            Endpoint::Health => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::ApiData => "api_data",
            Endpoint::ApiRandom => "api_random",
            Endpoint::ApiError => "api_error",
            Endpoint::Unmatched => "unmatched",
        }
    }

    /// One line for the `/` listing.
    pub fn description(self) -> &'static str {
        match self {
            Endpoint::Index => "this listing",
            Endpoint::Health => "status, version and uptime",
            Endpoint::Metrics => "Prometheus metrics (text format)",
            Endpoint::ApiData => "a sample record with a timestamp",
            Endpoint::ApiRandom => "a random integer; optional `min` and `max` query parameters",
            Endpoint::ApiError => {
                "a simulated failure (500); optional `rate` in [0,1] is the failure probability"
            }
            Endpoint::Unmatched => "",
        }
    }

    /// Maps a request path to its route; anything unknown is `Unmatched`.
    /// A trailing slash is tolerated because the router tolerates it.
    pub fn from_path(path: &str) -> Endpoint {
        let trimmed = match path.strip_suffix('/') {
            Some(rest) if !rest.is_empty() && !rest.ends_with('/') => rest,
            _ => path,
        };
        Self::ROUTES
            .into_iter()
            .find(|route| route.path() == Some(trimmed))
            .unwrap_or(Endpoint::Unmatched)
    }

    /// A dense index for lookup tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The `method` label: the common HTTP methods, and `other` for everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodLabel {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl MethodLabel {
    /// How many distinct values exist, for lookup tables.
    pub const COUNT: usize = 8;

    pub fn from_method(method: &warp::http::Method) -> MethodLabel {
        use warp::http::Method;
        match *method {
            Method::GET => MethodLabel::Get,
            Method::HEAD => MethodLabel::Head,
            Method::POST => MethodLabel::Post,
            Method::PUT => MethodLabel::Put,
            Method::DELETE => MethodLabel::Delete,
            Method::PATCH => MethodLabel::Patch,
            Method::OPTIONS => MethodLabel::Options,
            _ => MethodLabel::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            MethodLabel::Get => "GET",
            MethodLabel::Head => "HEAD",
            MethodLabel::Post => "POST",
            MethodLabel::Put => "PUT",
            MethodLabel::Delete => "DELETE",
            MethodLabel::Patch => "PATCH",
            MethodLabel::Options => "OPTIONS",
            MethodLabel::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_maps_back_to_itself() {
        for route in Endpoint::ROUTES {
            let path = route.path().unwrap();
            assert_eq!(Endpoint::from_path(path), route, "{path}");
            if path != "/" {
                assert_eq!(Endpoint::from_path(&format!("{path}/")), route, "{path}/");
            }
        }
    }

    #[test]
    fn unknown_paths_are_unmatched() {
        for path in ["", "//", "/api", "/api/data/x", "/HEALTH", "/metrics.json"] {
            assert_eq!(Endpoint::from_path(path), Endpoint::Unmatched, "{path}");
        }
    }

    #[test]
    fn indices_are_dense() {
        assert_eq!(Endpoint::Unmatched.index(), Endpoint::COUNT - 1);
        assert_eq!(MethodLabel::Other.index(), MethodLabel::COUNT - 1);
    }

    #[test]
    fn odd_methods_share_one_label() {
        let odd = warp::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(MethodLabel::from_method(&odd), MethodLabel::Other);
        assert_eq!(
            MethodLabel::from_method(&warp::http::Method::TRACE),
            MethodLabel::Other
        );
        assert_eq!(
            MethodLabel::from_method(&warp::http::Method::GET).label(),
            "GET"
        );
    }
}
