//! How a layout talks to Redis: it builds [`Command`]s and reads
//! [`Reply`]s through an [`Exec`], so the caller decides how commands are
//! batched into pipelines (the writer sends one pipeline; query-api splits
//! large reads into several in flight). `fred::clients::Client` is an
//! [`Exec`] that sends one pipeline.

use crate::LayoutError;
use bytes::Bytes;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use futures::future::BoxFuture;

/// One Redis command: its name and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub name: &'static str,
    pub args: Vec<Bytes>,
    /// Index in `args` of the key that picks the Redis Cluster slot: 0
    /// for ordinary commands, 2 for `EVAL script numkeys key ...`.
    pub key_arg: usize,
}

impl Command {
    pub fn new(name: &'static str, args: Vec<Bytes>) -> Self {
        Self {
            name,
            args,
            key_arg: 0,
        }
    }

    /// `EVAL script numkeys keys... args...`, routed in a Redis Cluster by
    /// its first key (so every key must share one hash tag).
    pub fn eval(script: &'static str, keys: Vec<Bytes>, args: Vec<Bytes>) -> Self {
        let mut all = Vec::with_capacity(2 + keys.len() + args.len());
        all.push(Bytes::from_static(script.as_bytes()));
        all.push(Bytes::from(keys.len().to_string()));
        all.extend(keys);
        all.extend(args);
        Self {
            name: "EVAL",
            args: all,
            key_arg: 2,
        }
    }

    /// A command from string-like arguments (reads, not the hot path).
    pub fn of(name: &'static str, args: &[&[u8]]) -> Self {
        Self::new(
            name,
            args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
        )
    }
}

/// A Redis reply, as layouts read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Nil,
    Int(i64),
    Bytes(Bytes),
    Array(Vec<Reply>),
    /// An error reply to this command (the others still ran).
    Error(String),
}

impl Reply {
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            Reply::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn into_array(self) -> Vec<Reply> {
        match self {
            Reply::Array(a) => a,
            Reply::Nil => Vec::new(),
            other => vec![other],
        }
    }

    /// The reply, or the error it carries for `command`.
    pub fn ok(self, command: &'static str) -> Result<Reply, LayoutError> {
        match self {
            Reply::Error(message) => Err(LayoutError::Refused { command, message }),
            r => Ok(r),
        }
    }

    /// `(field, value)` pairs of an HGETALL reply, as an array or a map.
    pub fn into_pairs(self) -> Vec<(Bytes, Bytes)> {
        let mut it = self.into_array().into_iter();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let (Reply::Bytes(k), Reply::Bytes(v)) = (k, v) {
                out.push((k, v));
            }
        }
        out
    }
}

impl From<Value> for Reply {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => Reply::Nil,
            Value::Integer(i) => Reply::Int(i),
            Value::Boolean(b) => Reply::Int(b as i64),
            Value::Double(d) => Reply::Bytes(Bytes::from(d.to_string())),
            Value::String(s) => Reply::Bytes(s.into_inner()),
            Value::Bytes(b) => Reply::Bytes(b),
            Value::Array(a) => Reply::Array(a.into_iter().map(Reply::from).collect()),
            Value::Map(m) => Reply::Array(
                m.inner()
                    .into_iter()
                    .flat_map(|(k, v)| [Reply::Bytes(k.into_bytes()), Reply::from(v)])
                    .collect(),
            ),
            Value::Queued => Reply::Nil,
        }
    }
}

/// Runs commands against Redis.
pub trait Exec: Send + Sync {
    /// Sends `commands` (as one or more pipelines) and answers one reply
    /// per command, in order; `Err` when Redis did not answer them all.
    fn pipeline<'a>(
        &'a self,
        commands: Vec<Command>,
    ) -> BoxFuture<'a, Result<Vec<Reply>, LayoutError>>;
}

impl Exec for fred::clients::Client {
    fn pipeline<'a>(
        &'a self,
        commands: Vec<Command>,
    ) -> BoxFuture<'a, Result<Vec<Reply>, LayoutError>> {
        Box::pin(send_pipeline(self, commands))
    }
}

/// Sends `commands` as one pipeline on `client` and answers fred's result
/// for each command; `Err` (a description) when Redis did not answer them
/// all (connection lost, pipeline not sent). The one place commands become
/// fred pipelines: the writer and the readers both go through it.
/// Resolves once `pool` is connected, however many attempts that takes.
/// fred's `wait_for_connect` answers for the next attempt only, so a
/// service that reports ready after it would stay unready for ever when
/// it starts before Redis accepts connections (compose, Kubernetes): the
/// first attempt is refused and the ones that succeed later go unseen.
/// `what` names the pool in the warnings (`writer.redis_url`, ...).
pub async fn until_connected(pool: &fred::clients::Pool, what: &str) {
    let mut failures = 0u32;
    loop {
        match pool.wait_for_connect().await {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                // The first refusal, then one line a minute or so.
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(redis = what, error = %e, failures, "redis is not answering yet; retrying");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

pub async fn pipeline_results(
    client: &fred::clients::Client,
    commands: Vec<Command>,
) -> Result<Vec<Result<Value, fred::error::Error>>, String> {
    let n = commands.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let pipe = client.pipeline();
    for c in commands {
        let hash = if c.key_arg == 0 {
            ClusterHash::FirstKey
        } else {
            ClusterHash::Offset(c.key_arg)
        };
        let args: Vec<Value> = c.args.into_iter().map(Value::Bytes).collect();
        let _: Value = pipe
            .custom(CustomCommand::new_static(c.name, hash, false), args)
            .await
            .map_err(|e| e.to_string())?;
    }
    let results = pipe.try_all::<Value>().await;
    if results.len() != n {
        // fred answers a pipeline it could not send with one error.
        let e = results.into_iter().find_map(Result::err);
        return Err(e.map_or_else(
            || format!("redis answered {n} commands with a different count"),
            |e| e.to_string(),
        ));
    }
    Ok(results)
}

/// Sends `commands` as one pipeline on `client`; per-command error replies
/// come back as [`Reply::Error`].
pub async fn send_pipeline(
    client: &fred::clients::Client,
    commands: Vec<Command>,
) -> Result<Vec<Reply>, LayoutError> {
    Ok(pipeline_results(client, commands)
        .await
        .map_err(LayoutError::Redis)?
        .into_iter()
        .map(|r| match r {
            Ok(v) => Reply::from(v),
            Err(e) if matches!(e.kind(), fred::error::ErrorKind::IO) => {
                Reply::Error(format!("IO {}", e.details()))
            }
            Err(e) => Reply::Error(e.details().to_string()),
        })
        .collect())
}
