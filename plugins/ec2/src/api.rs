//! The EC2 Query API: a form-encoded POST, signed with SigV4, answered in XML.
//!
//! Throttling and server errors are retried with exponential backoff and jitter; other
//! errors come back as [`ApiError`] with AWS's code. Credentials never leave this module
//! except inside the signature: error text is scrubbed of them.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use loom_protocol::backoff::Backoff;

/// EC2 API version spoken.
const VERSION: &str = "2016-11-15";

/// Where and as whom to call.
#[derive(Clone)]
pub struct Client {
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub max_attempts: u32,
    agent: ureq::Agent,
}

/// A failed call.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// AWS's error code (`AuthFailure`, `InvalidInstanceID.NotFound`, ...), or
    /// `Network`/`BadResponse`.
    pub code: String,
    /// AWS's message, scrubbed of credentials.
    pub message: String,
    /// HTTP status, 0 when no answer arrived.
    pub http_status: u16,
}

impl ApiError {
    /// AWS answered that the request itself was refused: nothing was done.
    pub fn refused(&self) -> bool {
        (400..500).contains(&self.http_status)
    }

    /// The credentials were not accepted.
    pub fn bad_credentials(&self) -> bool {
        matches!(
            self.code.as_str(),
            "AuthFailure"
                | "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "UnrecognizedClientException"
                | "InvalidAccessKeyId"
        )
    }

    /// Worth trying again after a pause.
    fn transient(&self) -> bool {
        matches!(
            self.code.as_str(),
            "RequestLimitExceeded"
                | "Throttling"
                | "ThrottlingException"
                | "Unavailable"
                | "InternalError"
                | "ServiceUnavailable"
                | "Network"
        ) || self.http_status >= 500
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.bad_credentials() {
            return write!(
                f,
                "AWS did not accept the credentials (api_user/api_password): {} ({})",
                self.message, self.code
            );
        }
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl Client {
    pub fn new(endpoint: String, region: String, access_key: String, secret_key: String, max_attempts: u32) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        Client { endpoint, region, access_key, secret_key, max_attempts: max_attempts.max(1), agent }
    }

    /// Calls `action` with `params`; returns the XML answer. Blocking: run it on the
    /// blocking pool.
    pub fn call(&self, action: &str, params: &[(String, String)]) -> Result<String, ApiError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut attempt = 1;
        loop {
            match self.call_once(action, params) {
                Err(e) if e.transient() && attempt < self.max_attempts => {
                    std::thread::sleep(backoff.next_pause());
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn call_once(&self, action: &str, params: &[(String, String)]) -> Result<String, ApiError> {
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", action).append_pair("Version", VERSION);
            for (k, v) in params {
                form.append_pair(k, v);
            }
            form.finish()
        };
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let identity = Credentials::new(&self.access_key, &self.secret_key, None, None, "loom-provider-fields").into();
        let signing = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| self.local_error(&format!("cannot sign the request: {e}")))?
            .into();
        let headers = [("content-type", content_type)];
        let signable =
            SignableRequest::new("POST", &self.endpoint, headers.into_iter(), SignableBody::Bytes(body.as_bytes()))
                .map_err(|e| self.local_error(&format!("cannot sign the request: {e}")))?;
        let (instructions, _) = sign(signable, &signing)
            .map_err(|e| self.local_error(&format!("cannot sign the request: {e}")))?
            .into_parts();

        let mut request = self.agent.post(&self.endpoint).header("content-type", content_type);
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let mut response = request.send(body.as_bytes()).map_err(|e| ApiError {
            code: "Network".into(),
            message: self.scrub(&format!("cannot reach {}: {e}", self.endpoint)),
            http_status: 0,
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().with_config().limit(16 << 20).read_to_string().map_err(|e| ApiError {
            code: "Network".into(),
            message: format!("reading the answer failed: {e}"),
            http_status: status,
        })?;
        if (200..300).contains(&status) {
            return Ok(text);
        }
        let (code, message) =
            error_of(&text).unwrap_or_else(|| ("BadResponse".into(), format!("HTTP {status} without an EC2 error")));
        Err(ApiError { code, message: self.scrub(&message), http_status: status })
    }

    fn local_error(&self, message: &str) -> ApiError {
        ApiError { code: "Signing".into(), message: self.scrub(message), http_status: 0 }
    }

    /// `text` without the access key or the secret key.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in [&self.secret_key, &self.access_key] {
            if secret.len() >= 3 {
                out = out.replace(secret.as_str(), "[redacted]");
            }
        }
        out
    }
}

/// `(Code, Message)` of an EC2 error document.
fn error_of(xml: &str) -> Option<(String, String)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let error = doc.descendants().find(|n| n.has_tag_name("Error"))?;
    let text = |tag: &str| {
        error.children().find(|n| n.has_tag_name(tag)).and_then(|n| n.text()).unwrap_or_default().to_owned()
    };
    Some((text("Code"), text("Message")))
}

/// Text of the first element named `tag` under `node`.
pub fn child_text<'a>(node: roxmltree::Node<'a, 'a>, tag: &str) -> Option<&'a str> {
    node.descendants().find(|n| n.has_tag_name(tag)).and_then(|n| n.text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ec2_error_documents() {
        let xml = r#"<?xml version="1.0"?><Response><Errors><Error><Code>AuthFailure</Code><Message>AWS was not able to validate the provided access credentials</Message></Error></Errors><RequestID>r</RequestID></Response>"#;
        let (code, message) = error_of(xml).unwrap();
        assert_eq!(code, "AuthFailure");
        let e = ApiError { code, message, http_status: 401 };
        assert!(e.bad_credentials() && e.refused() && !e.transient());
        assert!(e.to_string().starts_with("AWS did not accept the credentials"));
        assert!(ApiError { code: "RequestLimitExceeded".into(), message: String::new(), http_status: 503 }.transient());
    }

    #[test]
    fn scrubs_both_keys() {
        let c = Client::new("http://x".into(), "us-east-1".into(), "AKIAEXAMPLE".into(), "s3cr3t-key".into(), 1);
        assert_eq!(c.scrub("key AKIAEXAMPLE sig s3cr3t-key"), "key [redacted] sig [redacted]");
    }
}
