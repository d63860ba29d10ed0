//! Direct write pipelines against a real redis-server: per-command error
//! replies, AUTH and SELECT from the URL, a Redis restart, and clusters
//! left to fred.

use fred::interfaces::ClientLike;
use fred::types::Builder;
use fred::types::config::Config;
use redis_process::{RedisCluster, RedisServer};
use std::time::Duration;
use storage_layout::Command;
use storage_layout::direct::DirectPipes;

async fn pool(url: &str) -> fred::clients::Pool {
    let pool = Builder::from_config(Config::from_url(url).unwrap())
        .build_pool(2)
        .unwrap();
    pool.init().await.unwrap();
    pool
}

/// GET through fred, beside the direct connections.
async fn get(pool: &fred::clients::Pool, key: &str) -> Option<String> {
    let replies = storage_layout::exec::send_pipeline(
        pool.next(),
        vec![Command::of("GET", &[key.as_bytes()])],
    )
    .await
    .unwrap();
    replies[0]
        .bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

fn set(key: &str, value: &str) -> Command {
    Command::of("SET", &[key.as_bytes(), value.as_bytes()])
}

#[tokio::test]
async fn each_command_gets_its_own_reply_and_the_rest_still_run() {
    let redis = RedisServer::start().unwrap();
    let pool = pool(&redis.url()).await;
    let direct = DirectPipes::new(&pool).expect("standalone redis goes direct");
    let mut commands = vec![
        set("a", "1"),
        // WRONGTYPE: `a` holds a string.
        Command::of("HSET", &[b"a", b"f", b"v"]),
        Command::of("NOSUCHCOMMAND", &[b"x"]),
    ];
    // Enough commands that the request and the replies span many reads.
    for i in 0..20_000 {
        commands.push(set(&format!("k{i}"), &"v".repeat(i % 300)));
    }
    let replies = direct.pipeline(&commands).await.unwrap();
    assert_eq!(replies.len(), commands.len());
    assert_eq!(replies[0], Ok(()));
    assert!(
        replies[1].as_ref().unwrap_err().starts_with("WRONGTYPE"),
        "{:?}",
        replies[1]
    );
    assert!(
        replies[2]
            .as_ref()
            .unwrap_err()
            .starts_with("ERR unknown command"),
        "{:?}",
        replies[2]
    );
    assert!(replies[3..].iter().all(Result::is_ok));
    assert_eq!(get(&pool, "k19999").await, Some("v".repeat(19_999 % 300)));
    assert_eq!(redis.command(&["DBSIZE"]).unwrap(), "20001");
}

#[tokio::test]
async fn credentials_and_database_come_from_the_url() {
    let redis = RedisServer::start().unwrap();
    // Set after the start: the harness's readiness probe has no password.
    redis
        .command(&["CONFIG", "SET", "requirepass", "s3cret"])
        .unwrap();
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", redis.port());
    let pool = pool(&url).await;
    let direct = DirectPipes::new(&pool).unwrap();
    let replies = direct.pipeline(&[set("in-db-3", "yes")]).await.unwrap();
    assert_eq!(replies, vec![Ok(())]);
    // fred, on the same database, sees it.
    assert_eq!(get(&pool, "in-db-3").await.as_deref(), Some("yes"));

    // A wrong password is refused when the connection is set up.
    let bad = format!("redis://:wrong@127.0.0.1:{}/3", redis.port());
    let bad_pool = Builder::from_config(Config::from_url(&bad).unwrap())
        .build_pool(1)
        .unwrap();
    let _ = bad_pool.init().await;
    let direct = DirectPipes::new(&bad_pool).unwrap();
    // fred's connection was refused, so the pipeline fails or (waiting
    // for a connection that never comes) runs into the caller's deadline.
    let r = tokio::time::timeout(Duration::from_secs(2), direct.pipeline(&[set("x", "1")])).await;
    assert!(!matches!(r, Ok(Ok(_))), "{r:?}");
    assert_eq!(get(&pool, "x").await, None);
}

#[tokio::test]
async fn a_restarted_redis_fails_one_pipeline_then_is_written_again() {
    let mut redis = RedisServer::start().unwrap();
    let pool = pool(&redis.url()).await;
    let direct = DirectPipes::new(&pool).unwrap();
    assert_eq!(
        direct.pipeline(&[set("a", "1")]).await.unwrap(),
        vec![Ok(())]
    );
    assert_eq!(
        direct.pipeline(&[set("b", "1")]).await.unwrap(),
        vec![Ok(())]
    );
    redis.restart().unwrap();
    // Each pool slot's old connection fails at most once, then is
    // reopened; writes go through again within a few tries.
    let mut failures = 0;
    let mut ok = false;
    for _ in 0..100 {
        match direct.pipeline(&[set("c", "1")]).await {
            Ok(r) if r == vec![Ok(())] => {
                ok = true;
                break;
            }
            _ => failures += 1,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "never written again after the restart");
    assert!(failures >= 1, "the restart was not noticed");
    assert_eq!(redis.command(&["GET", "c"]).unwrap(), "1");
}

#[tokio::test]
async fn a_cluster_is_left_to_fred() {
    let cluster = RedisCluster::start(3).unwrap();
    let pool = pool(&cluster.url()).await;
    assert!(DirectPipes::new(&pool).is_none());
}
