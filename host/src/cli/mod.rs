//! The command-line client: `binaryrepo repo|plugins|user|token|gc` against a running server,
//! through the same management API as everyone else. Tables for people, `--json` (the server's
//! own JSON) for scripts; errors carry the server's message and an exit code (see
//! [`CliError::exit_code`]).

mod client;
mod table;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

pub use client::{Api, CliError, DEFAULT_SERVER};

/// Options every client command takes.
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The server's base URL.
    #[arg(long, global = true, env = "BINARYREPO_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// All repositories.
    List,
    /// One repository's definition.
    Show { name: String },
    /// A new repository (`--type` and `--format` are needed unless `--file` gives them).
    Create {
        name: String,
        #[command(flatten)]
        fields: RepoFields,
    },
    /// Changes the fields given; the others stay as they are.
    Update {
        name: String,
        #[command(flatten)]
        fields: RepoFields,
    },
    /// Removes a repository (its stored content is collected by the next GC).
    Delete { name: String },
}

/// A repository's fields as flags; `--set key=value` reaches any field the API accepts.
#[derive(Args, Debug, Default)]
pub struct RepoFields {
    /// local, remote or virtual
    #[arg(long = "type", value_name = "TYPE")]
    pub repo_type: Option<String>,
    /// The package format (a loaded plugin's, e.g. docker).
    #[arg(long)]
    pub format: Option<String>,
    /// The upstream of a remote repository.
    #[arg(long)]
    pub url: Option<String>,
    /// A member of a virtual repository (repeat, in order).
    #[arg(long = "member", value_name = "REPO")]
    pub members: Vec<String>,
    /// A dedicated port for the repository.
    #[arg(long)]
    pub port: Option<u16>,
    /// A host name the repository answers to (repeat).
    #[arg(long = "hostname", value_name = "HOST")]
    pub hostnames: Vec<String>,
    /// The upstream user name of a remote repository.
    #[arg(long)]
    pub username: Option<String>,
    /// Read the upstream password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Any field: the value is read as JSON when it parses (`true`, `8`, `["a"]`), else as a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A JSON file with the repository's fields; flags override it.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// All users (API-managed, configured and htpasswd ones).
    List,
    /// A new user; the password is read from standard input (`--password-stdin`) or given as a
    /// bcrypt hash.
    Create {
        name: String,
        #[arg(long)]
        admin: bool,
        /// A group the user belongs to (repeat).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Read the password from the first line of standard input.
        #[arg(long, conflicts_with = "password_hash")]
        password_stdin: bool,
        /// A bcrypt hash (`htpasswd -nB`) instead of a password.
        #[arg(long, value_name = "HASH")]
        password_hash: Option<String>,
    },
    /// Removes a user (and their API tokens).
    Delete { name: String },
    /// Sets a user's password, read from the first line of standard input.
    Passwd { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Your API tokens (an admin sees everyone's).
    List,
    /// A new API token; its secret is shown once.
    Create {
        /// What the token is for ("ci", "laptop").
        name: String,
        /// Expiry [default: never].
        #[arg(long, value_name = "SECONDS")]
        expires_in: Option<u64>,
    },
    /// Revokes a token by its id.
    Revoke { id: String },
}

pub enum Action {
    Repo(RepoCommand),
    Plugins,
    User(UserCommand),
    Token(TokenCommand),
    Gc { grace_seconds: Option<u64> },
}

/// Runs one client command and prints its result; errors go to stderr with their exit code.
pub fn run(args: &ClientArgs, action: Action) -> ExitCode {
    let result = Api::new(&args.server).and_then(|api| execute(&api, args.json, action));
    match result {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("binaryrepo: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn execute(api: &Api, json_out: bool, action: Action) -> Result<String, CliError> {
    let pretty = |v: &Value| format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default());
    match action {
        Action::Repo(RepoCommand::List) => {
            let list = api.get("/api/repositories")?;
            if json_out {
                return Ok(pretty(&list));
            }
            let rows = items(&list)
                .iter()
                .map(|r| {
                    let upstream = if r.get("members").is_some() { cell(r, "members") } else { cell(r, "url") };
                    vec![
                        cell(r, "name"),
                        cell(r, "type"),
                        cell(r, "format"),
                        upstream,
                        cell(r, "port"),
                        if r.get("default").and_then(Value::as_bool) == Some(true) { "yes".into() } else { "-".into() },
                        cell(r, "managed_by"),
                    ]
                })
                .collect::<Vec<_>>();
            Ok(table::render(&["NAME", "TYPE", "FORMAT", "UPSTREAM/MEMBERS", "PORT", "DEFAULT", "MANAGED BY"], &rows))
        }
        Action::Repo(RepoCommand::Show { name }) => {
            let repo = api.get(&format!("/api/repositories/{}", segment(&name)?))?;
            Ok(if json_out { pretty(&repo) } else { table::object(&repo) })
        }
        Action::Repo(RepoCommand::Create { name, fields }) => {
            let mut body = fields.into_object()?;
            body.insert("name".into(), json!(name));
            let (_, repo) = api.send(Method::POST, "/api/repositories", Some(&Value::Object(body)))?;
            Ok(if json_out { pretty(&repo) } else { format!("created repository {name}\n") })
        }
        Action::Repo(RepoCommand::Update { name, fields }) => {
            let path = format!("/api/repositories/{}", segment(&name)?);
            let current = api.get(&path)?;
            let changes = fields.into_object()?;
            let body = merged(current, changes)?;
            let (_, repo) = api.send(Method::PUT, &path, Some(&body))?;
            Ok(if json_out { pretty(&repo) } else { format!("updated repository {name}\n") })
        }
        Action::Repo(RepoCommand::Delete { name }) => {
            api.send(Method::DELETE, &format!("/api/repositories/{}", segment(&name)?), None)?;
            Ok(if json_out { pretty(&json!({"deleted": name})) } else { format!("deleted repository {name}\n") })
        }
        Action::Plugins => {
            let answer = api.get("/api/plugins")?;
            if json_out {
                return Ok(pretty(&answer));
            }
            let (loaded, refused) =
                (answer.get("plugins").cloned().unwrap_or(Value::Null), answer.get("refused").cloned().unwrap_or(Value::Null));
            let rows = items(&loaded)
                .iter()
                .map(|p| {
                    let sha = cell(p, "sha256");
                    vec![cell(p, "format"), cell(p, "contract"), cell(p, "roots"), cell(p, "file"), sha.chars().take(12).collect()]
                })
                .collect::<Vec<_>>();
            let mut out = table::render(&["FORMAT", "CONTRACT", "ROOTS", "FILE", "SHA256"], &rows);
            let refused = items(&refused);
            if !refused.is_empty() {
                out.push('\n');
                let rows = refused.iter().map(|r| vec![cell(r, "file"), cell(r, "reason")]).collect::<Vec<_>>();
                out.push_str(&table::render(&["REFUSED FILE", "REASON"], &rows));
            }
            Ok(out)
        }
        Action::User(UserCommand::List) => {
            let list = api.get("/api/users")?;
            if json_out {
                return Ok(pretty(&list));
            }
            let rows = items(&list)
                .iter()
                .map(|u| {
                    vec![
                        cell(u, "name"),
                        if u.get("admin").and_then(Value::as_bool) == Some(true) { "yes".into() } else { "no".into() },
                        cell(u, "groups"),
                        cell(u, "source"),
                        table::time(u.get("created_at")),
                    ]
                })
                .collect::<Vec<_>>();
            Ok(table::render(&["NAME", "ADMIN", "GROUPS", "SOURCE", "CREATED"], &rows))
        }
        Action::User(UserCommand::Create { name, admin, groups, password_stdin, password_hash }) => {
            let mut body = json!({"name": name, "admin": admin, "groups": groups});
            match (password_stdin, password_hash) {
                (true, _) => body["password"] = json!(read_secret("password")?),
                (false, Some(h)) => body["password_hash"] = json!(h),
                (false, None) => return Err(CliError::Usage("give the password with --password-stdin, or --password-hash".into())),
            }
            let (_, user) = api.send(Method::POST, "/api/users", Some(&body))?;
            Ok(if json_out { pretty(&user) } else { format!("created user {name}\n") })
        }
        Action::User(UserCommand::Delete { name }) => {
            api.send(Method::DELETE, &format!("/api/users/{}", segment(&name)?), None)?;
            Ok(if json_out { pretty(&json!({"deleted": name})) } else { format!("deleted user {name}\n") })
        }
        Action::User(UserCommand::Passwd { name }) => {
            let body = json!({"password": read_secret("password")?});
            let (_, user) = api.send(Method::PATCH, &format!("/api/users/{}", segment(&name)?), Some(&body))?;
            Ok(if json_out { pretty(&user) } else { format!("password of {name} changed\n") })
        }
        Action::Token(TokenCommand::List) => {
            let list = api.get("/api/tokens")?;
            if json_out {
                return Ok(pretty(&list));
            }
            let rows = items(&list)
                .iter()
                .map(|t| {
                    vec![
                        cell(t, "id"),
                        cell(t, "name"),
                        cell(t, "user"),
                        table::time(t.get("created_at")),
                        table::time(t.get("expires_at")),
                    ]
                })
                .collect::<Vec<_>>();
            Ok(table::render(&["ID", "NAME", "USER", "CREATED", "EXPIRES"], &rows))
        }
        Action::Token(TokenCommand::Create { name, expires_in }) => {
            let mut body = json!({"name": name});
            if let Some(s) = expires_in {
                body["expires_in_seconds"] = json!(s);
            }
            let (_, token) = api.send(Method::POST, "/api/tokens", Some(&body))?;
            if json_out {
                return Ok(pretty(&token));
            }
            Ok(format!(
                "created token {} ({name})\n{}\nThe secret is shown only now: use it as BINARYREPO_TOKEN, or as a Bearer token or a Basic password.\n",
                cell(&token, "id"),
                cell(&token, "token")
            ))
        }
        Action::Token(TokenCommand::Revoke { id }) => {
            api.send(Method::DELETE, &format!("/api/tokens/{}", segment(&id)?), None)?;
            Ok(if json_out { pretty(&json!({"revoked": id})) } else { format!("revoked token {id}\n") })
        }
        Action::Gc { grace_seconds } => gc(api, json_out, grace_seconds),
    }
}

/// `POST /api/gc` starts a collection in the background (202); `GET /api/gc` shows its
/// progress until it has finished. A collection already running (409) is followed instead of
/// starting another.
fn gc(api: &Api, json_out: bool, grace_seconds: Option<u64>) -> Result<String, CliError> {
    let path = match grace_seconds {
        Some(s) => format!("/api/gc?grace_seconds={s}"),
        None => "/api/gc".into(),
    };
    let mut run = match api.send(Method::POST, &path, None) {
        Ok((_, run)) => run,
        Err(CliError::Server { status: StatusCode::CONFLICT, .. }) => {
            eprintln!("gc: a collection is already running; following it");
            api.get("/api/gc")?
        }
        Err(e) => return Err(e),
    };
    let id = run.get("id").cloned();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let line = progress_line(&run);
        if line != last {
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        if run.get("state").and_then(Value::as_str) != Some("running") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        run = api.get("/api/gc")?;
        if run.get("id").cloned() != id {
            // Another run replaced ours as the last one: ours finished in between.
            break;
        }
    }
    if tty {
        eprintln!();
    }
    if run.get("state").and_then(Value::as_str) == Some("failed") {
        return Err(CliError::Server {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("garbage collection failed: {}", cell(&run, "error")),
        });
    }
    if json_out {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&run).unwrap_or_default()));
    }
    let count = |k: &str| run.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cleaned = match (count("tags_removed"), count("manifests_removed")) {
        (0, 0) => String::new(),
        (tags, manifests) => format!("; cleanup rules removed {tags} tags, {manifests} manifests"),
    };
    Ok(format!(
        "removed {} blobs ({} bytes), kept {}; evicted {} ({} bytes) for cache limits{cleaned}\n",
        cell(&run, "removed"),
        cell(&run, "removed_bytes"),
        cell(&run, "kept"),
        cell(&run, "evicted"),
        cell(&run, "evicted_bytes")
    ))
}

/// `gc: mark 3/7 repositories, 120 blobs scanned, 4 removed`: where the run is.
fn progress_line(v: &Value) -> String {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    format!(
        "gc: {} {}/{} repositories, {} blobs scanned, {} removed, {} evicted",
        v.get("phase").and_then(Value::as_str).unwrap_or("-"),
        n("repositories_done"),
        n("repositories_total"),
        n("blobs_scanned"),
        n("removed"),
        n("evicted")
    )
}

fn items(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn cell(v: &Value, key: &str) -> String {
    table::cell(v.get(key))
}

/// A name as one path segment: names with a `/` or `?` would address something else.
fn segment(name: &str) -> Result<&str, CliError> {
    if name.is_empty() || name.contains(['/', '?', '#', '%']) || name == "." || name == ".." {
        return Err(CliError::Usage(format!("{name:?} is not a valid name")));
    }
    Ok(name)
}

fn read_secret(what: &str) -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| CliError::Usage(format!("reading the {what} from standard input: {e}")))?;
    let secret = line.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(CliError::Usage(format!("no {what} on standard input")));
    }
    Ok(secret)
}

impl RepoFields {
    fn into_object(self) -> Result<Map<String, Value>, CliError> {
        let mut obj = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
                match serde_json::from_str(&text) {
                    Ok(Value::Object(o)) => o,
                    Ok(_) => return Err(CliError::Usage(format!("{}: not a JSON object", path.display()))),
                    Err(e) => return Err(CliError::Usage(format!("{}: {e}", path.display()))),
                }
            }
            None => Map::new(),
        };
        let mut put = |k: &str, v: Value| {
            obj.insert(k.into(), v);
        };
        if let Some(t) = self.repo_type {
            put("type", json!(t));
        }
        if let Some(f) = self.format {
            put("format", json!(f));
        }
        if let Some(u) = self.url {
            put("url", json!(u));
        }
        if !self.members.is_empty() {
            put("members", json!(self.members));
        }
        if let Some(p) = self.port {
            put("port", json!(p));
        }
        if !self.hostnames.is_empty() {
            put("hostnames", json!(self.hostnames));
        }
        if let Some(u) = self.username {
            put("username", json!(u));
        }
        if self.password_stdin {
            put("password", json!(read_secret("upstream password")?));
        }
        for kv in &self.set {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(CliError::Usage(format!("--set {kv:?}: expected KEY=VALUE")));
            };
            let value = serde_json::from_str(v).unwrap_or_else(|_| json!(v));
            put(k.trim(), value);
        }
        Ok(obj)
    }
}

/// The repository as shown, with `changes` applied, as a definition to PUT back. What the view
/// adds (`has_credentials`, `access_default`, `managed_by`) is dropped, and a default `access`
/// stays default; upstream credentials the API never shows must be given again to be kept.
fn merged(current: Value, changes: Map<String, Value>) -> Result<Value, CliError> {
    let Value::Object(mut obj) = current else { return Err(CliError::Protocol("a repository is not a JSON object".into())) };
    let had_credentials = obj.remove("has_credentials").and_then(|v| v.as_bool()).unwrap_or(false);
    if obj.remove("access_default").and_then(|v| v.as_bool()) == Some(true) {
        obj.remove("access");
    }
    obj.remove("managed_by");
    if had_credentials && !changes.contains_key("password") && !changes.contains_key("username") {
        return Err(CliError::Usage(
            "this repository has upstream credentials, which the API does not show and an update replaces: \
             give them again (--username and --password-stdin)"
                .into(),
        ));
    }
    obj.extend(changes);
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_keeps_what_it_does_not_change() {
        let current = json!({"name": "r", "type": "remote", "format": "docker", "url": "http://a", "has_credentials": false,
            "access": [{"who": "anonymous", "allow": ["read"]}], "access_default": true, "managed_by": "api"});
        let mut changes = Map::new();
        changes.insert("url".into(), json!("http://b"));
        let body = merged(current, changes).unwrap();
        assert_eq!(body, json!({"name": "r", "type": "remote", "format": "docker", "url": "http://b"}));
        let with_creds = json!({"name": "r", "has_credentials": true, "access_default": false, "access": []});
        assert!(matches!(merged(with_creds, Map::new()), Err(CliError::Usage(_))));
    }

    #[test]
    fn progress_shows_phase_and_numbers() {
        let v = json!({"state": "running", "phase": "mark", "repositories_done": 3, "repositories_total": 7,
                       "blobs_scanned": 120, "removed": 4, "evicted": 0});
        assert_eq!(progress_line(&v), "gc: mark 3/7 repositories, 120 blobs scanned, 4 removed, 0 evicted");
    }
}
