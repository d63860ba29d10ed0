//! The security suite: TLS on every port, client certificates for
//! service-to-service calls, a bearer token per role, certificate reload,
//! raft peers from another CA, and query bounds. Real processes over
//! loopback: the all-in-one broker and a three-node cluster-ctl, with a
//! CA and tokens from `broker::pki`, and a second CA as the attacker's.

use broker::pki::LocalPki;
use broker_common::Service;
use broker_common::config::{ClientAuth, SecurityConfig};
use broker_common::http_client::HttpClient;
use broker_common::security::{BearerToken, ClientSecurity, Security};
use broker_proto::v1::cluster_service_client::ClusterServiceClient;
use broker_proto::v1::host_service_client::HostServiceClient;
use broker_proto::v1::query_service_client::QueryServiceClient;
use broker_proto::v1::raft_service_client::RaftServiceClient;
use broker_proto::v1::router_service_client::RouterServiceClient;
use broker_proto::v1::writer_service_client::WriterServiceClient;
use broker_proto::v1::{
    HostsRequest, JoinRequest, LeaveRequest, ListHostsRequest, Member, MemberRole, MemberState,
    MembersRequest, MetricBatch, RaftMessages, RingSettings, RouteRequest, SetRingRequest,
    SetStateRequest, VoterRequest, WriteRequest,
};
use broker_tests::cluster::CtlCluster;
use broker_tests::*;
use hyper::{Method, StatusCode};
use redis_process::RedisServer;
use std::time::Duration;
use tonic::Code;

const T: Duration = Duration::from_secs(10);

/// The broker's PKI and an unrelated one (a stranger's CA).
fn two_pkis() -> (LocalPki, LocalPki) {
    let ours = LocalPki::generate(&scratch_dir("broker-pki-"), &[]).unwrap();
    let theirs = LocalPki::generate(&scratch_dir("broker-pki-other-"), &[]).unwrap();
    (ours, theirs)
}

/// A client trusting `ca_of`'s CA, presenting `cert_of`'s node certificate
/// (or none), with `token` (or none).
fn client(ca_of: &LocalPki, cert_of: Option<&LocalPki>, token: Option<&str>) -> ClientSecurity {
    ClientSecurity::for_tool(
        Some(ca_of.path(broker::pki::CA_CERT)),
        cert_of.map(|p| p.path(broker::pki::NODE_CERT)),
        cert_of.map(|p| p.path(broker::pki::NODE_KEY)),
        token,
    )
    .unwrap()
}

fn batch(host: &str, ts: i64) -> MetricBatch {
    MetricBatch {
        seq: 1,
        metric_names: metric_names(2),
        points: vec![point(host, ts, 2)],
    }
}

async fn health(security: &ClientSecurity, endpoint: &str) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let ch = security
        .connect(endpoint, |e| e.timeout(T))
        .await
        .map_err(|e| broker_common::error_chain(&e))?;
    HealthClient::new(ch)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

async fn get(security: &ClientSecurity, url: &str) -> Result<(StatusCode, String), String> {
    HttpClient::new(security)
        .send(Method::GET, url, None, T)
        .await
        .map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
        .map_err(|e| e.to_string())
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("the call must be refused");
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_wants_tls_the_right_certificate_and_the_right_token() {
    let (pki, stranger) = two_pkis();
    let redis = RedisServer::start().unwrap();
    let mut config = config_for(&redis.url());
    config.security = pki.security_config().unwrap();
    config.security.tls.reload_interval = Duration::from_secs(1);
    let broker = Running::broker(
        config,
        &[
            Service::IngestGateway,
            Service::ShardRouter,
            Service::StorageWriter,
            Service::QueryApi,
            Service::HostManager,
        ],
    )
    .await;
    let grpc = format!("https://{}", broker.grpc);
    let https = format!("https://{}", broker.http);
    let token = |r: &str| pki.token(r).unwrap();
    let ingest = client(&pki, None, Some(&token("ingest")));
    let query = client(&pki, None, Some(&token("query")));
    let peer = client(&pki, Some(&pki), Some(&token("admin")));
    let anonymous = client(&pki, None, None);

    // Wait until it serves (the health service is open to anyone with TLS).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while health(&anonymous, &grpc).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "broker not serving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. Plaintext is refused on both ports.
    let plain = ClientSecurity::default();
    let e = health(&plain, &format!("http://{}", broker.grpc))
        .await
        .unwrap_err();
    println!("plaintext gRPC: {e}");
    let e = health(
        &plain,
        &format!("http://{}", broker.internal.expect("internal listener")),
    )
    .await
    .unwrap_err();
    println!("plaintext internal gRPC: {e}");
    let e = get(&plain, &format!("http://{}/health", broker.http))
        .await
        .unwrap_err();
    println!("plaintext HTTP: {e}");

    // 2. A server certificate from another CA is not trusted by our
    // clients, and a client certificate from another CA is refused by the
    // server (the handshake fails, on either port).
    let e = health(&client(&stranger, None, None), &grpc)
        .await
        .unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    let foreign_cert = client(&pki, Some(&stranger), Some(&token("admin")));
    let e = health(&foreign_cert, &grpc).await.unwrap_err();
    println!("client certificate from another CA, gRPC: {e}");
    let e = get(&foreign_cert, &format!("{https}/health"))
        .await
        .unwrap_err();
    println!("client certificate from another CA, HTTP: {e}");

    // 3. gRPC: missing and wrong tokens are UNAUTHENTICATED, per role.
    let ts = now() - 30;
    let refused = try_send_batches_with(&grpc, &anonymous, vec![batch("sec-a", ts)]).await;
    let (c, m) = code(refused);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("ingest token"), "{m}");
    let refused = try_send_batches_with(&grpc, &query, vec![batch("sec-a", ts)]).await;
    let (c, m) = code(refused);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("wrong bearer token"), "{m}");
    assert!(
        !m.contains(&token("query")),
        "a token never appears in an error"
    );
    let acks = try_send_batches_with(&grpc, &ingest, vec![batch("sec-a", ts)])
        .await
        .expect("the ingest token is accepted");
    assert_eq!(acks[0].accepted, 1, "{:?}", acks[0].errors);

    let ch = |s: &ClientSecurity| s.lazy(&grpc, |e| e.timeout(T)).unwrap();
    let (c, m) = code(
        QueryServiceClient::new(ch(&ingest))
            .hosts(HostsRequest::default())
            .await,
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");
    let hosts = QueryServiceClient::new(ch(&query))
        .hosts(HostsRequest::default())
        .await
        .expect("the query token reads")
        .into_inner();
    assert!(hosts.hosts.iter().any(|h| h.id == "sec-a"), "{hosts:?}");

    // Service-to-service: the admin token is not enough without the
    // client certificate; with both, the writer takes the batch.
    // On the internal port: the agents' port does not serve them.
    let internal = format!("https://{}", broker.internal.expect("internal listener"));
    let peer_ch = |s: &ClientSecurity| s.lazy(&internal, |e| e.timeout(T)).unwrap();
    let write = |s: &ClientSecurity| {
        let mut c = WriterServiceClient::new(peer_ch(s));
        async move {
            c.write(WriteRequest {
                batch: Some(batch("sec-b", ts)),
                ring_epoch: 0,
            })
            .await
        }
    };
    let admin_no_cert = client(&pki, None, Some(&token("admin")));
    let (c, m) = code(write(&admin_no_cert).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("client certificate"), "{m}");
    let (c, m) = code(write(&client(&pki, Some(&pki), Some(&token("ingest")))).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    write(&peer)
        .await
        .expect("a peer with the CA's certificate and the admin token writes");
    let (c, m) = code(
        RouterServiceClient::new(peer_ch(&admin_no_cert))
            .route(RouteRequest {
                batch: Some(batch("sec-c", ts)),
            })
            .await,
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");
    RouterServiceClient::new(peer_ch(&peer))
        .route(RouteRequest {
            batch: Some(batch("sec-c", ts)),
        })
        .await
        .expect("a peer routes");
    // host-manager: the query token lists, the ingest token does not.
    let (c, m) = code(
        HostServiceClient::new(ch(&ingest))
            .list(ListHostsRequest::default())
            .await,
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");
    HostServiceClient::new(ch(&query))
        .list(ListHostsRequest::default())
        .await
        .expect("the query token lists hosts");

    // 4. HTTP: 401 with WWW-Authenticate for a missing or wrong token;
    // probes and metrics stay open.
    for (path, role) in [
        ("/api/query/hosts", "query"),
        ("/api/v1/query?query=up", "query"),
        ("/api/hosts", "query"),
        ("/api/alerts", "query"),
        ("/api/dlq", "admin"),
    ] {
        let (s, body) = get(&anonymous, &format!("{https}{path}")).await.unwrap();
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(body.contains(&format!("{role} token")), "{path}: {body}");
        let (s, _) = get(&ingest, &format!("{https}{path}")).await.unwrap();
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path} with the ingest token");
        let right = client(&pki, None, Some(&token(role)));
        let (s, body) = get(&right, &format!("{https}{path}")).await.unwrap();
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
    }
    let (s, _) = HttpClient::new(&anonymous)
        .send(
            Method::POST,
            &format!("{https}/api/v1/write"),
            Some(vec![]),
            T,
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for path in ["/health", "/ready", "/metrics"] {
        let (s, _) = get(&anonymous, &format!("{https}{path}")).await.unwrap();
        assert_eq!(s, StatusCode::OK, "{path} is open");
    }

    // 5. Certificate reload: a new node certificate from the same CA is
    // served without a restart.
    let before = served_cert(&pki, &broker.grpc.to_string(), false).await;
    pki.reissue_node(&[]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now_served = served_cert(&pki, &broker.grpc.to_string(), false).await;
        if now_served != before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reissued certificate was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = served_cert(&pki, &broker.http.to_string(), true).await;
    assert_ne!(after, before, "the HTTP port reloads too");
    write(&client(&pki, Some(&pki), Some(&token("admin"))))
        .await
        .expect("peers with the new certificate are accepted");

    broker.stop().await;
}

/// The DER of the certificate the server at `authority` presents.
async fn served_cert(pki: &LocalPki, authority: &str, http1: bool) -> Vec<u8> {
    let s = client(pki, None, None);
    let tls = s.tls.as_ref().unwrap();
    let stream = broker_common::security::tls::connect(tls, authority, http1)
        .await
        .expect("tls handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_peers_without_the_ca_cannot_join_or_disturb_the_cluster() {
    let (pki, stranger) = two_pkis();
    let mut security: SecurityConfig = pki.security_config().unwrap();
    security.tls.client_auth = ClientAuth::Optional;
    let cluster = CtlCluster::start_secured(3, Duration::from_secs(1), security).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let term = cluster.node(leader).view().term;
    let endpoint = cluster.endpoint(leader);
    let admin = pki.token("admin").unwrap();

    // A heartbeat in a follower's name (raft messages are taken only from
    // voters, at their addresses: this test runs on theirs) claiming the
    // lead at a far higher term: stepped, it deposes the real leader (the
    // control at the end shows it does).
    let follower = cluster.ids().into_iter().find(|&i| i != leader).unwrap();
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    m.from = follower;
    m.to = leader;
    m.term = term + 100;
    let bytes = protobuf::Message::write_to_bytes(&m).unwrap();
    let send = |s: ClientSecurity| {
        let bytes = bytes.clone();
        let endpoint = endpoint.clone();
        async move {
            let ch = s.lazy(&endpoint, |e| e.timeout(T)).unwrap();
            RaftServiceClient::new(ch)
                .send(RaftMessages {
                    messages: vec![bytes],
                })
                .await
        }
    };
    // Plaintext, a stranger's CA, our CA without a client certificate (even
    // with the admin token), a client certificate from another CA: refused.
    let plain_endpoint = endpoint.replace("https://", "http://");
    let plain = RaftServiceClient::new(
        ClientSecurity::default()
            .lazy(&plain_endpoint, |e| e.timeout(T))
            .unwrap(),
    )
    .send(RaftMessages {
        messages: vec![bytes.clone()],
    })
    .await;
    assert!(plain.is_err());
    assert!(
        send(client(&stranger, Some(&stranger), Some(&admin)))
            .await
            .is_err()
    );
    let (c, m) = code(send(client(&pki, None, Some(&admin))).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(
        send(client(&pki, Some(&stranger), Some(&admin)))
            .await
            .is_err()
    );
    // Management calls want the admin token.
    let join = JoinRequest {
        member: Some(Member {
            id: "intruder".into(),
            roles: vec![MemberRole::StorageWriter as i32],
            addr: "https://127.0.0.1:9".into(),
            weight: 1,
            ..Default::default()
        }),
    };
    let ctl = |s: &ClientSecurity| {
        ClusterServiceClient::new(s.lazy(&endpoint, |e| e.timeout(T)).unwrap())
    };
    let anonymous = client(&pki, None, None);
    let (c, m) = code(ctl(&anonymous).join(join.clone()).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    let query = client(&pki, None, Some(&pki.token("query").unwrap()));
    let (c, m) = code(
        ctl(&query)
            .remove_voter(VoterRequest {
                id: leader,
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");

    // Nothing was disturbed: same leader, same term, no intruder.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.wait_leader(Duration::from_secs(5)).await, leader);
    assert_eq!(
        cluster.node(leader).view().term,
        term,
        "the forged vote was never stepped"
    );
    let admin_client = client(&pki, None, Some(&admin));
    let members = ctl(&admin_client)
        .members(MembersRequest {})
        .await
        .expect("the admin token reads members")
        .into_inner();
    assert!(members.members.iter().all(|m| m.id != "intruder"));
    // And the cluster still commits through its own (TLS) peers.
    let joined = cluster
        .client()
        .join(Member {
            id: "writer-ok".into(),
            roles: vec![MemberRole::StorageWriter as i32],
            addr: "https://127.0.0.1:9".into(),
            weight: 1,
            ..Default::default()
        })
        .await
        .expect("a member with the admin token joins");
    assert!(
        joined
            .state
            .unwrap()
            .members
            .iter()
            .any(|m| m.id == "writer-ok")
    );

    // Control: the same message from a peer with our CA's certificate and
    // the admin token is stepped, and moves the term, so the refusals
    // above are what kept the cluster undisturbed.
    send(client(&pki, Some(&pki), Some(&admin)))
        .await
        .expect("a peer's raft message is accepted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cluster.node(leader).view().term < term + 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the control message was not stepped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The member credential every service holds lets it act as its own
/// member (join, leave, drain itself with its process instance), never as
/// an operator: with it, another member cannot be marked offline, drained
/// or removed, the ring and the voters cannot change. The admin token can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_credential_acts_only_as_its_own_member() {
    let pki = LocalPki::generate(&scratch_dir("broker-pki-"), &[]).unwrap();
    let security: SecurityConfig = pki.security_config().unwrap();
    assert!(
        security.tokens.member.is_some(),
        "broker certs writes a member token"
    );
    let cluster = CtlCluster::start_secured(3, Duration::from_secs(1), security).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let endpoint = cluster.endpoint(leader);
    let ctl = |token: &str| {
        ClusterServiceClient::new(
            client(&pki, Some(&pki), Some(token))
                .lazy(&endpoint, |e| e.timeout(T))
                .unwrap(),
        )
    };
    let member_token = pki.token("member").unwrap();
    let admin_token = pki.token("admin").unwrap();
    let (mut member, mut admin) = (ctl(&member_token), ctl(&admin_token));
    let writer = |id: &str, instance: &str| JoinRequest {
        member: Some(Member {
            id: id.into(),
            roles: vec![MemberRole::StorageWriter as i32],
            addr: "https://127.0.0.1:9".into(),
            weight: 1,
            instance: instance.into(),
            ..Default::default()
        }),
    };
    // Two services join, each with its own instance.
    member
        .join(writer("w-a", "instance-a-0123456789"))
        .await
        .expect("a member joins");
    member
        .join(writer("w-b", "instance-b-0123456789"))
        .await
        .expect("a member joins");

    // As an operator: refused, whatever the member asks.
    let set = |id: &str, state: MemberState, instance: &str| SetStateRequest {
        id: id.into(),
        state: state as i32,
        reason: String::new(),
        instance: instance.into(),
    };
    for (what, r) in [
        (
            "offline",
            member.set_state(set("w-b", MemberState::Offline, "")).await,
        ),
        (
            "offline with its own instance",
            member
                .set_state(set("w-a", MemberState::Offline, "instance-a-0123456789"))
                .await,
        ),
        (
            "drain another",
            member
                .set_state(set("w-b", MemberState::Draining, "instance-a-0123456789"))
                .await,
        ),
        (
            "leave another",
            member
                .leave(LeaveRequest {
                    id: "w-b".into(),
                    instance: String::new(),
                })
                .await,
        ),
    ] {
        let (c, m) = code(r);
        assert_eq!(c, Code::PermissionDenied, "{what}: {m}");
        assert!(m.contains("admin token"), "{what}: {m}");
    }
    let (c, m) = code(
        member
            .set_ring(SetRingRequest {
                ring: Some(RingSettings {
                    vnodes: 1,
                    hash: "crc32".into(),
                }),
            })
            .await,
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");
    let (c, m) = code(
        member
            .remove_voter(VoterRequest {
                id: leader,
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");
    // The instance is never handed out, so it cannot be copied.
    let state = member
        .members(MembersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(state.members.iter().all(|m| m.instance.is_empty()));
    assert!(
        state
            .members
            .iter()
            .all(|m| m.state == MemberState::Online as i32)
    );

    // As itself: drain and leave with its instance.
    member
        .set_state(set("w-a", MemberState::Draining, "instance-a-0123456789"))
        .await
        .expect("a member drains itself");
    member
        .leave(LeaveRequest {
            id: "w-a".into(),
            instance: "instance-a-0123456789".into(),
        })
        .await
        .expect("a member leaves as itself");
    // The operator: any member, no instance.
    admin
        .set_state(set("w-b", MemberState::Offline, ""))
        .await
        .expect("the admin token marks another member offline");
    let left = admin
        .leave(LeaveRequest {
            id: "w-b".into(),
            instance: String::new(),
        })
        .await
        .expect("the admin token removes a member")
        .into_inner();
    let ids: Vec<_> = left
        .state
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert!(!ids.iter().any(|i| i == "w-a" || i == "w-b"), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regex_over_every_host_is_bounded_by_the_query_limits() {
    let redis = RedisServer::start().unwrap();
    let mut config = config_for(&redis.url());
    config.query.max_hosts = 10;
    let broker = Running::broker(config, &Service::DEFAULT).await;
    let ts = now() - 30;
    let points = (0..25)
        .map(|h| point(&format!("scan-{h:02}"), ts, 2))
        .collect();
    let acks = send_batches(
        &broker.endpoint(),
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(2),
            points,
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 25);
    for q in [
        r#"m00{host=~".*"}"#,
        r#"{__name__=~".+"}"#,
        r#"sum(m01{host=~"scan-.*"})"#,
    ] {
        let (status, body) = http(
            broker.http,
            "GET",
            &format!("/api/v1/query?query={}", enc(q)),
            "",
        )
        .await;
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.to_string().contains("query.max_hosts"), "{q}: {body}");
    }
    // Within the bound it answers.
    let (status, body) = http(
        broker.http,
        "GET",
        &format!("/api/v1/query?query={}", enc(r#"m00{host=~"scan-0.*"}"#)),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    broker.stop().await;
}

#[test]
fn tokens_never_appear_in_debug_output() {
    let pki = LocalPki::generate(&scratch_dir("broker-pki-"), &[]).unwrap();
    let config = pki.security_config().unwrap();
    let s = Security::from_config(&config).unwrap();
    let t = pki.token("admin").unwrap();
    assert!(!format!("{config:?}").contains(&t));
    assert!(!format!("{s:?}").contains(&t));
    assert!(!format!("{:?}", BearerToken::new(Some(&t)).unwrap()).contains(&t));
}
