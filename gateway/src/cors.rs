//! Cross-origin access (CORS) for browser apps served from another origin than the
//! gateway: their pushes and pulls carry an `Authorization` header and a JSON body, so
//! the browser asks first (a preflight) and reads an answer, errors included, only when
//! it names the page's origin.
//!
//! Only the sync and health endpoints take part; the internal API is for services.

use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::http::{
    HeaderName, HeaderValue, Method,
    header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER},
};
use reqwest::Url;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may reuse a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The layer for `CORS_ALLOWED_ORIGINS`: `*`, a comma-separated list of origins, or
/// empty (`None`: no cross-origin access). A malformed origin is a start-up error, not
/// an origin that silently never matches.
pub(crate) fn layer(allowed: &str) -> anyhow::Result<Option<CorsLayer>> {
    let allowed = allowed.trim();
    let origins = match allowed {
        "" => return Ok(None),
        "*" => AllowOrigin::any(),
        list => AllowOrigin::list(
            list.split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(origin)
                .collect::<anyhow::Result<Vec<_>>>()
                .context("CORS_ALLOWED_ORIGINS")?,
        ),
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                AUTHORIZATION,
                CONTENT_TYPE,
                HeaderName::from_static(crate::routes::CLIENT_ID_HEADER),
            ])
            // A `503` says when to try again.
            .expose_headers([RETRY_AFTER])
            .max_age(PREFLIGHT_MAX_AGE),
    ))
}

/// One allowed origin, exactly as a browser sends it in `Origin`: scheme, host and port
/// when not the default, nothing after (`https://app.example`, `http://localhost:5173`).
fn origin(raw: &str) -> anyhow::Result<HeaderValue> {
    let url = Url::parse(raw).with_context(|| format!("{raw:?} is not an origin"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("{raw:?} is not an http or https origin");
    }
    let serialized = url.origin().ascii_serialization();
    if serialized != raw {
        bail!(
            "{raw:?} is not an origin as browsers send it (scheme://host[:port], \
             lower case, no path); did you mean {serialized:?}?"
        );
    }
    HeaderValue::from_str(raw).with_context(|| format!("{raw:?} is not an origin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_taken_as_browsers_send_them() {
        for good in [
            "https://app.example",
            "http://localhost:5173",
            "https://app.example:8443",
            "http://127.0.0.1:3000",
        ] {
            assert_eq!(origin(good).expect(good), good);
        }
        for (bad, why) in [
            ("app.example", "not an origin"),
            (
                "https://app.example/",
                "did you mean \"https://app.example\"",
            ),
            ("https://app.example/app", "no path"),
            (
                "https://App.Example",
                "did you mean \"https://app.example\"",
            ),
            (
                "https://app.example:443",
                "did you mean \"https://app.example\"",
            ),
            ("ftp://files.example", "not an http or https origin"),
            ("null", "not an origin"),
        ] {
            let e = format!("{:#}", origin(bad).expect_err(bad));
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn any_origin_a_list_or_none() {
        assert!(layer("").expect("empty").is_none());
        assert!(layer("  ").expect("blank").is_none());
        assert!(layer("*").expect("any").is_some());
        assert!(
            layer("https://app.example, http://localhost:5173")
                .expect("list")
                .is_some()
        );
        let e = format!(
            "{:#}",
            layer("https://app.example,app.example").expect_err("bad")
        );
        assert!(e.starts_with("CORS_ALLOWED_ORIGINS"), "{e}");
        assert!(e.contains("\"app.example\""), "{e}");
    }
}
