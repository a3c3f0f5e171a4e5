//! A typed client for the SFU's internal HTTP API.

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_sfu_api::paths;

use crate::auth::{ApiToken, process_token};
use crate::error::{Error, Result};

/// One SFU's internal API at `base` (`http://127.0.0.1:7880`), called with a credential.
#[derive(Clone, Debug)]
pub struct SfuApi {
    http: reqwest::Client,
    pub base: String,
    /// `Bearer <token>`, sent with every request (sensitive: never in debug output).
    authorization: Option<HeaderValue>,
}

impl SfuApi {
    /// Presents the process's credential ([`process_token`]: `SWITCHBOARD_SFU_API_TOKEN`
    /// or `_FILE`), if it has one.
    pub fn new(base: impl Into<String>) -> Self {
        Self::with_client(reqwest::Client::new(), base)
    }

    /// Shares `http` (its pool and timeouts) with other SFUs' clients; presents the
    /// process's credential, as [`SfuApi::new`] does.
    pub fn with_client(http: reqwest::Client, base: impl Into<String>) -> Self {
        let authorization = process_token().map(|t| t.header_value());
        Self { http, base: base.into().trim_end_matches('/').to_owned(), authorization }
    }

    /// Presents `token` instead (`None`: no credential at all).
    pub fn with_token(mut self, token: Option<&ApiToken>) -> Self {
        self.authorization = token.map(ApiToken::header_value);
        self
    }

    /// A request with the credential.
    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.authorization {
            Some(value) => request.header(AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    pub fn url(&self, template: &str, room: &str, participant: &str, track: &str) -> String {
        format!("{}{}", self.base, paths::fill(template, room, participant, track))
    }

    /// Sends `request` (`method` to `url`): the status and body of the reply.
    async fn send(method: Method, url: &str, request: reqwest::RequestBuilder) -> Result<(u16, String)> {
        // The error names the URL itself: reqwest's would repeat it.
        let transport = |source: reqwest::Error| Error::Transport {
            method: method.clone(),
            url: url.to_owned(),
            source: source.without_url(),
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.map_err(transport)?))
    }

    /// A JSON reply, or the SFU's refusal.
    async fn call<T: DeserializeOwned>(method: Method, url: &str, request: reqwest::RequestBuilder) -> Result<T> {
        let (status, body) = Self::send(method.clone(), url, request).await?;
        parse(method, url, status, &body)
    }

    pub async fn get<T: DeserializeOwned>(&self, url: &str) -> Result<T> {
        Self::call(Method::GET, url, self.request(Method::GET, url)).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, url: &str, body: &B) -> Result<T> {
        Self::call(Method::POST, url, self.request(Method::POST, url).json(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, url: &str, body: &B) -> Result<T> {
        Self::call(Method::PUT, url, self.request(Method::PUT, url).json(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, url: &str) -> Result<T> {
        Self::call(Method::DELETE, url, self.request(Method::DELETE, url)).await
    }

    /// GET of a plain-text endpoint (`/metrics`, `/readyz`): status and body.
    pub async fn get_text(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        Self::send(Method::GET, &url, self.request(Method::GET, &url)).await
    }

    /// Any method to `url` with arbitrary bytes (for malformed-input and access tests):
    /// status and body.
    pub async fn send_raw(&self, method: Method, url: &str, body: &'static str) -> Result<(u16, String)> {
        let request = self.request(method.clone(), url).header("content-type", "application/json").body(body);
        Self::send(method, url, request).await
    }

    /// Raw POST of arbitrary bytes (for malformed-input tests).
    pub async fn post_raw(&self, url: &str, body: &'static str) -> Result<(u16, String)> {
        self.send_raw(Method::POST, url, body).await
    }
}

/// The reply to `method` `url`: its JSON on success, the SFU's refusal otherwise.
fn parse<T: DeserializeOwned>(method: Method, url: &str, status: u16, body: &str) -> Result<T> {
    if !(200..300).contains(&status) {
        return Err(Error::refused(method, url, status, body));
    }
    serde_json::from_str(body).map_err(|source| Error::Decode { method, url: url.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_sfu_api::ErrorCode;

    #[test]
    fn replies_map_to_values_refusals_and_decode_errors() {
        let url = "http://sfu/v1/rooms/r/participants/p/events";
        let ok: serde_json::Value = parse(Method::GET, url, 200, r#"{"events":[]}"#).unwrap();
        assert_eq!(ok["events"], serde_json::json!([]));

        let gone = parse::<serde_json::Value>(
            Method::GET,
            url,
            404,
            r#"{"code":"unknownParticipant","message":"no participant p"}"#,
        )
        .unwrap_err();
        assert_eq!(gone.code(), Some(ErrorCode::UnknownParticipant));
        assert!(matches!(&gone, Error::Refused { status: 404, url: u, .. } if u == url), "{gone:?}");

        let garbled = parse::<Vec<u32>>(Method::POST, url, 200, "not json").unwrap_err();
        assert!(matches!(&garbled, Error::Decode { method, .. } if method == Method::POST), "{garbled:?}");
        assert_eq!(garbled.code(), None, "a reply that does not parse is no refusal");
        assert!(garbled.to_string().starts_with(&format!("POST {url}: ")), "{garbled}");
    }
}
