//! `loom-plugin-ec2`: AWS EC2 instances, through the EC2 Query API.
//!
//! - CREATE: RunInstances with the task's `flavor` (instance type) and `image` (AMI), the
//!   key pair, security groups (or group ids and a subnet), and tags naming the cluster and
//!   node; idempotent per task through a client token. Returns `providerid` (the instance
//!   id) and `ssh-auth`.
//! - CONFIRM: DescribeInstances until the instance runs; returns its addresses and name.
//! - DELETE: TerminateInstances; an unknown instance is not an error.
//!
//! When AWS refuses a CREATE (bad credentials, bad parameters, a quota), nothing was
//! created, and the status is 201, Coopr's "nothing was created" (no DELETE needed); any
//! other failure is status 1.

mod api;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use loom_plugin_sdk::{Context, Map, Plugin, Provider, Task, TaskError, TaskOutcome, TaskResult, Value, json};

use crate::api::{ApiError, Client, child_text};

/// Status of a CREATE that AWS refused: nothing exists, nothing to DELETE (Coopr's 201).
const NOTHING_CREATED: i64 = 201;

struct Ec2 {
    poll: Duration,
    confirm_timeout: Duration,
    max_attempts: u32,
}

/// The provider's fields, as Coopr's AWS plugin read them.
struct Fields {
    client: Client,
    key_pair: Option<String>,
    key_file: Option<String>,
    ssh_user: String,
    security_groups: Vec<String>,
    security_group_ids: Vec<String>,
    subnet_id: Option<String>,
}

impl Provider for Ec2 {
    fn setup(&mut self, settings: &Map<String, Value>) -> Result<(), TaskError> {
        let secs = |k: &str, default: Duration| -> Result<Duration, TaskError> {
            match settings.get(k) {
                None => Ok(default),
                Some(v) => v
                    .as_f64()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| TaskError::new(format!("settings.{k} must be a number of seconds"))),
            }
        };
        self.poll = secs("pollSecs", Duration::from_secs(5))?;
        self.confirm_timeout = secs("confirmTimeoutSecs", Duration::from_secs(600))?;
        if let Some(v) = settings.get("maxAttempts") {
            self.max_attempts = v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| TaskError::new("settings.maxAttempts must be a whole number of at least 1"))?;
        }
        Ok(())
    }

    async fn create(&self, task: Task, ctx: Context) -> TaskOutcome {
        let f = self.fields(&task)?;
        let text = |k: &str, nested: (&str, &str)| {
            task.config
                .get(k)
                .or_else(|| task.config.get(nested.0).and_then(|n| n.get(nested.1)))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let flavor = text("flavor", ("hardwaretype", "flavor")).ok_or_else(|| {
            TaskError::new("config.flavor (the instance type, e.g. t3.small) is missing").with_status(NOTHING_CREATED)
        })?;
        let image = text("image", ("imagetype", "image"))
            .ok_or_else(|| TaskError::new("config.image (the AMI id) is missing").with_status(NOTHING_CREATED))?;
        let hostname = task.config.get("hostname").and_then(Value::as_str).unwrap_or_default().to_owned();

        let mut params = vec![
            p("ImageId", &image),
            p("InstanceType", &flavor),
            p("MinCount", "1"),
            p("MaxCount", "1"),
            // Makes a retried CREATE of this task return the same instance.
            p("ClientToken", &client_token(&task.task_id)),
        ];
        if let Some(k) = &f.key_pair {
            params.push(p("KeyName", k));
        }
        params.extend(f.security_groups.iter().enumerate().map(|(i, g)| p(&format!("SecurityGroup.{}", i + 1), g)));
        params
            .extend(f.security_group_ids.iter().enumerate().map(|(i, g)| p(&format!("SecurityGroupId.{}", i + 1), g)));
        if let Some(s) = &f.subnet_id {
            params.push(p("SubnetId", s));
        }
        let tags = [
            ("Name", hostname.as_str()),
            ("loom:cluster", task.cluster_id.as_deref().unwrap_or_default()),
            ("loom:node", task.node_id.as_deref().unwrap_or_default()),
        ];
        params.push(p("TagSpecification.1.ResourceType", "instance"));
        for (i, (k, v)) in tags.iter().enumerate() {
            params.push(p(&format!("TagSpecification.1.Tag.{}.Key", i + 1), k));
            params.push(p(&format!("TagSpecification.1.Tag.{}.Value", i + 1), v));
        }
        ctx.info(format!("RunInstances {flavor} {image} in {}", f.client.region));
        let xml = call(&f.client, "RunInstances", params).await.map_err(|e| {
            let status = if e.refused() { NOTHING_CREATED } else { 1 };
            let note = if e.refused() { "nothing was created" } else { "the instance may exist; DELETE it if so" };
            TaskError::new(format!("RunInstances failed: {e}; {note}")).with_status(status)
        })?;
        let id = xml_text(&xml, "instanceId")
            .ok_or_else(|| TaskError::new("RunInstances answered without an instanceId"))?;
        ctx.info(format!("created {id}"));
        let mut ssh_auth = json!({"user": f.ssh_user});
        if let Some(k) = &f.key_file {
            ssh_auth["identityfile"] = json!(k);
        }
        Ok(TaskResult::ok().with("providerid", id).with("ssh-auth", ssh_auth))
    }

    async fn confirm(&self, task: Task, ctx: Context) -> TaskOutcome {
        let f = self.fields(&task)?;
        let id = providerid(&task).ok_or_else(|| {
            TaskError::new("config.providerid is missing: CONFIRM needs the instance id CREATE returned")
        })?;
        let deadline = Instant::now() + self.confirm_timeout;
        loop {
            let xml = call(&f.client, "DescribeInstances", vec![p("InstanceId.1", &id)])
                .await
                .map_err(|e| describe_error(&id, &e))?;
            let doc = roxmltree::Document::parse(&xml)
                .map_err(|e| TaskError::new(format!("DescribeInstances answered invalid XML: {e}")))?;
            let Some(instance) = doc
                .descendants()
                .find(|n| n.has_tag_name("instancesSet"))
                .and_then(|s| s.children().find(|n| n.has_tag_name("item")))
            else {
                return Err(TaskError::new(format!("instance {id} does not exist")));
            };
            let state = instance
                .children()
                .find(|n| n.has_tag_name("instanceState"))
                .and_then(|s| child_text(s, "name"))
                .unwrap_or("unknown");
            match state {
                "running" => return Ok(running(instance, &task)),
                "pending" => ctx.progress(format!("{id} is pending"), None),
                other => return Err(TaskError::new(format!("instance {id} is {other}, not starting"))),
            }
            if Instant::now() + self.poll > deadline {
                return Err(TaskError::new(format!(
                    "instance {id} was not running within {} s",
                    self.confirm_timeout.as_secs()
                )));
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                () = ctx.cancelled() => return Err(TaskError::new(format!("cancelled while waiting for {id}"))),
            }
        }
    }

    async fn delete(&self, task: Task, ctx: Context) -> TaskOutcome {
        let Some(id) = providerid(&task) else {
            return Ok(TaskResult { stdout: "no providerid: nothing to delete\n".into(), ..TaskResult::ok() });
        };
        let f = self.fields(&task)?;
        match call(&f.client, "TerminateInstances", vec![p("InstanceId.1", &id)]).await {
            Ok(_) => {
                ctx.info(format!("terminating {id}"));
                Ok(TaskResult { stdout: format!("terminating {id}\n"), ..TaskResult::ok() })
            }
            Err(e) if e.code.starts_with("InvalidInstanceID") => {
                ctx.info(format!("{id} does not exist: nothing to delete"));
                Ok(TaskResult { stdout: format!("instance {id} does not exist\n"), ..TaskResult::ok() })
            }
            Err(e) => Err(TaskError::new(format!("TerminateInstances {id} failed: {e}"))),
        }
    }
}

impl Ec2 {
    /// Reads `config.provider.provisioner`.
    fn fields(&self, task: &Task) -> Result<Fields, TaskError> {
        let fields = task.provider_fields().ok_or_else(|| {
            TaskError::new("config.provider.provisioner is missing: it holds api_user, api_password and aws_region")
                .with_status(NOTHING_CREATED)
        })?;
        let text = |k: &str| fields.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let need = |k: &str| {
            text(k).ok_or_else(|| {
                TaskError::new(format!("config.provider.provisioner.{k} is missing")).with_status(NOTHING_CREATED)
            })
        };
        let region = need("aws_region")?;
        let endpoint = text("endpoint").unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com/"));
        let list = |k: &str| -> Vec<String> {
            match fields.get(k) {
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                Some(Value::String(s)) => {
                    s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
                }
                _ => Vec::new(),
            }
        };
        Ok(Fields {
            client: Client::new(endpoint, region, need("api_user")?, need("api_password")?, self.max_attempts),
            key_pair: text("ssh_keypair"),
            key_file: text("ssh_key_resource"),
            ssh_user: text("ssh_user").unwrap_or_else(|| "ec2-user".into()),
            security_groups: list("security_groups"),
            security_group_ids: list("security_group_ids"),
            subnet_id: text("subnet_id"),
        })
    }
}

/// The CONFIRM result of a running instance.
fn running(instance: roxmltree::Node<'_, '_>, task: &Task) -> TaskResult {
    let field = |tag: &str| {
        instance
            .children()
            .find(|n| n.has_tag_name(tag))
            .and_then(|n| n.text())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    };
    let private = field("privateIpAddress");
    let public = field("ipAddress");
    let access = public.clone().or_else(|| private.clone()).unwrap_or_default();
    let hostname = field("dnsName")
        .or_else(|| field("privateDnsName"))
        .or_else(|| task.config.get("hostname").and_then(Value::as_str).map(str::to_owned));
    let mut result = TaskResult::ok().with("ipaddress", access.clone());
    result.ipaddresses = Some(json!({"access_v4": access, "bind_v4": private.unwrap_or_default()}));
    result.hostname = hostname;
    result
}

fn describe_error(id: &str, e: &ApiError) -> TaskError {
    if e.code.starts_with("InvalidInstanceID") {
        return TaskError::new(format!("instance {id} does not exist ({})", e.code));
    }
    TaskError::new(format!("DescribeInstances {id} failed: {e}"))
}

fn providerid(task: &Task) -> Option<String> {
    task.config.get("providerid").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// AWS client tokens are at most 64 ASCII characters.
fn client_token(task_id: &str) -> String {
    let clean: String = task_id.chars().filter(char::is_ascii_graphic).collect();
    format!("loom-{clean}").chars().take(64).collect()
}

fn p(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    child_text(doc.root(), tag).map(str::to_owned)
}

/// Calls the API on the blocking pool (the HTTP client is synchronous).
async fn call(client: &Client, action: &'static str, params: Vec<(String, String)>) -> Result<String, ApiError> {
    let client = client.clone();
    tokio::task::spawn_blocking(move || client.call(action, &params))
        .await
        .unwrap_or_else(|e| Err(ApiError { code: "Internal".into(), message: e.to_string(), http_status: 0 }))
}

fn main() -> ExitCode {
    let ec2 = Ec2 { poll: Duration::from_secs(5), confirm_timeout: Duration::from_secs(600), max_attempts: 5 };
    Plugin::new("ec2", env!("CARGO_PKG_VERSION")).max_concurrency(32).serve_provider(ec2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_fit_aws_limits() {
        assert_eq!(client_token("00000001-001-0001"), "loom-00000001-001-0001");
        assert_eq!(client_token(&"x".repeat(100)).len(), 64);
        assert_eq!(client_token("a b\u{e9}"), "loom-ab");
    }
}
