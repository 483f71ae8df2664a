//! Bad input over AMQP: every case gets a JSON-RPC error, and the agent keeps serving.

use std::sync::Arc;
use std::time::Duration;

use clacks_tests::{Probe, amqp_url, fast_options, start_agent, unique_domain};
use expect_test::{Expect, expect};
use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};

struct RawCaller {
    channel: lapin::Channel,
    replies: lapin::Consumer,
    queue: String,
}

impl RawCaller {
    async fn new(queue: String) -> RawCaller {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ not reachable: {e}"));
        let channel = connection.create_channel().await.unwrap_or_else(|e| panic!("{e}"));
        let replies = clacks_tests::direct_reply_consumer(&channel).await;
        std::mem::forget(connection);
        RawCaller { channel, replies, queue }
    }

    async fn send(&mut self, body: &[u8], with_user: bool) -> String {
        let mut properties =
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()).with_correlation_id("c1".into());
        if with_user {
            properties = properties.with_user_id("guest".into());
        }
        self.channel
            .basic_publish("".into(), self.queue.as_str().into(), BasicPublishOptions::default(), body, properties)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let delivery = tokio::time::timeout(Duration::from_secs(5), self.replies.next())
            .await
            .unwrap_or_else(|_| panic!("no reply to {}", String::from_utf8_lossy(&body[..body.len().min(80)])));
        let delivery = delivery.and_then(Result::ok).unwrap_or_else(|| panic!("reply stream ended"));
        assert_eq!(delivery.properties.correlation_id().as_ref().map(|c| c.as_str()), Some("c1"));
        String::from_utf8_lossy(&delivery.data).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errors_and_the_agent_keeps_serving() {
    let url = amqp_url();
    let domain = unique_domain();
    let agent = start_agent(&url, fast_options(&domain, "n1"), vec![Arc::new(Probe)]).await;
    let mut raw = RawCaller::new(domain.command_queue("core")).await;

    async fn check(raw: &mut RawCaller, body: &[u8], expect: Expect) {
        let reply = raw.send(body, true).await;
        expect.assert_eq(&reply);
        // After every bad request the agent still answers a good one.
        let ping = raw.send(br#"{"jsonrpc":"2.0","method":"ping","id":0}"#, true).await;
        assert_eq!(ping, r#"{"jsonrpc":"2.0","result":"pong","id":0}"#);
    }

    check(&mut raw, b"{not json", expect![[r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"request is not valid JSON: key must be a string at line 1 column 2","data":{"code":"PARSE_ERROR"}},"id":null}"#]]).await;
    check(&mut raw, b"", expect![[r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"request is not valid JSON: EOF while parsing a value at line 1 column 0","data":{"code":"PARSE_ERROR"}},"id":null}"#]]).await;
    check(&mut raw, &[0xff, 0xfe, 0x00], expect![[r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"request is not valid JSON: expected value at line 1 column 1","data":{"code":"PARSE_ERROR"}},"id":null}"#]]).await;
    check(&mut raw, br#"{"jsonrpc":"2.0","id":7}"#, expect![[r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"missing 'method'","data":{"code":"INVALID_REQUEST"}},"id":7}"#]]).await;
    check(&mut raw, br#"{"jsonrpc":"2.0","method":"echo","params":"x","id":8}"#, expect![[r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"'params' must be an array or an object","data":{"code":"INVALID_REQUEST"}},"id":8}"#]]).await;
    check(&mut raw, br#"{"jsonrpc":"2.0","method":"add","params":["a",1],"id":9}"#, expect![[r#"{"jsonrpc":"2.0","error":{"code":-32602,"message":"add: argument 'a' must be integer, got string","data":{"code":"INVALID_PARAMS","details":{"param":"a"}}},"id":9}"#]]).await;
    check(&mut raw, br#"{"jsonrpc":"2.0","method":"add","params":{"a":1},"id":10}"#, expect![[r#"{"jsonrpc":"2.0","error":{"code":-32602,"message":"add: missing argument 'b' (integer)","data":{"code":"INVALID_PARAMS","details":{"param":"b"}}},"id":10}"#]]).await;
    check(&mut raw, br#"{"jsonrpc":"2.0","method":"add","params":[1,2,3],"id":11}"#, expect![[r#"{"jsonrpc":"2.0","error":{"code":-32602,"message":"add takes at most 2 argument(s), 3 given","data":{"code":"INVALID_PARAMS"}},"id":11}"#]]).await;
    check(&mut raw, br#"{"jsonrpc":"2.0","method":"noSuchThing","id":12}"#, expect![[r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"no live node provides 'noSuchThing'","data":{"code":"COMMAND_NOT_DEFINED","details":{"method":"noSuchThing"}}},"id":12}"#]]).await;
    check(&mut raw, br#"{"jsonrpc":"2.0","method":"_internal","id":13}"#, expect![[r#"{"jsonrpc":"2.0","error":{"code":-32009,"message":"'_internal' is not callable remotely","data":{"code":"METHOD_FORBIDDEN"}},"id":13}"#]]).await;
    check(&mut raw, br#"{"jsonrpc":"1.0","method":"ping","id":14}"#, expect![[r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"'jsonrpc' must be \"2.0\"","data":{"code":"INVALID_REQUEST"}},"id":14}"#]]).await;
    check(&mut raw, br#"[{"jsonrpc":"2.0","method":"add","params":[1,2],"id":"a"},{"jsonrpc":"2.0","method":"ping"},7]"#, expect![[r#"[{"jsonrpc":"2.0","result":3,"id":"a"},{"jsonrpc":"2.0","error":{"code":-32600,"message":"a request must be a JSON object","data":{"code":"INVALID_REQUEST"}},"id":null}]"#]]).await;

    // Oversized: 5 MiB against the 4 MiB default limit.
    let mut big = br#"{"jsonrpc":"2.0","method":"echo","params":[""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 5 * 1024 * 1024));
    big.extend(br#""],"id":15}"#);
    check(&mut raw, &big, expect![[r#"{"jsonrpc":"2.0","error":{"code":-32007,"message":"request of 5242935 bytes exceeds the limit of 4194304 bytes","data":{"code":"MESSAGE_TOO_LARGE"}},"id":null}"#]]).await;

    // Without user_id the agent refuses: it never runs a command for an unknown caller.
    let anonymous = raw.send(br#"{"jsonrpc":"2.0","method":"ping","id":16}"#, false).await;
    expect![[r#"{"jsonrpc":"2.0","error":{"code":-32001,"message":"the request carries no authenticated user","data":{"code":"COMMAND_NO_USERNAME"}},"id":16}"#]].assert_eq(&anonymous);

    // The broker itself refuses a forged user_id: the channel is closed, nothing is delivered.
    let forged = raw
        .channel
        .basic_publish(
            "".into(),
            raw.queue.as_str().into(),
            BasicPublishOptions::default(),
            br#"{"jsonrpc":"2.0","method":"ping","id":17}"#,
            BasicProperties::default().with_user_id("admin".into()).with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await;
    let refused = match forged {
        Err(e) => e.to_string(),
        Ok(confirm) => match confirm.await {
            Err(e) => e.to_string(),
            Ok(_) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if raw.channel.status().connected() { "still open".to_owned() } else { "Closed".to_owned() }
            }
        },
    };
    assert!(refused.contains("PRECONDITION") || refused.contains("Closed") || refused.contains("Error"), "{refused}");
    agent.stop().await;
}
