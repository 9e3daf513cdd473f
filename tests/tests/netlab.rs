//! The netns lab fixture does what later tests rely on.

use b3_tests::netlab::{namespaces_of, Lab};

#[test]
fn hosts_reach_each_other_and_links_go_down_and_up() {
    let lab = Lab::new(3).unwrap();
    let a = lab.host(0);
    let b_ip = lab.host(1).ip().to_string();
    let c_ip = lab.host(2).ip().to_string();
    assert_eq!(namespaces_of(lab.name()).len(), 4, "3 hosts + the switch");

    a.run(&["ping", "-c1", "-W2", &b_ip])
        .expect("host 0 reaches host 1");
    a.run(&["ping", "-c1", "-W2", &c_ip])
        .expect("host 0 reaches host 2");

    lab.link_down(1).unwrap();
    assert!(
        a.run(&["ping", "-c1", "-W1", &b_ip]).is_err(),
        "host 1 must be unreachable with its link down"
    );
    a.run(&["ping", "-c1", "-W2", &c_ip])
        .expect("others are unaffected");
    lab.link_up(1).unwrap();
    b3_tests::wait::until(
        "host 1 to come back",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(100),
        || a.run(&["ping", "-c1", "-W1", &b_ip]).ok(),
    )
    .unwrap();

    // Dropping the lab kills what runs inside it and deletes every namespace.
    let name = lab.name().to_string();
    let mut sleeper = lab.host(2).spawn("sleeper", &["sleep", "600"]).unwrap();
    assert!(sleeper.is_running());
    drop(lab);
    assert!(
        namespaces_of(&name).is_empty(),
        "namespaces left: {:?}",
        namespaces_of(&name)
    );
    b3_tests::wait::until(
        "processes in the lab to die",
        std::time::Duration::from_secs(5),
        std::time::Duration::from_millis(20),
        || (!sleeper.is_running()).then_some(()),
    )
    .unwrap();
}

#[test]
fn lab_is_removed_when_the_test_panics() {
    let name = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::new(2).unwrap();
        *name.lock().unwrap() = lab.name().to_string();
        panic!("test failure inside the lab");
    });
    assert!(result.is_err());
    let name = name.into_inner().unwrap();
    assert!(!name.is_empty());
    assert!(
        namespaces_of(&name).is_empty(),
        "namespaces left: {:?}",
        namespaces_of(&name)
    );
}
