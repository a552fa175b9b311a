def test_general_always_exists(alice):
    rooms = alice.get("/api/rooms").json["rooms"]
    assert rooms == [{"name": "general", "last_id": "0-0"}]


def test_create_and_list_rooms_with_last_id(alice):
    assert alice.post("/api/rooms", json={"name": "dev-talk_2"}).status_code == 201
    assert alice.post("/api/rooms", json={"name": "dev-talk_2"}).status_code == 200
    sent = alice.post("/api/rooms/dev-talk_2/messages", json={"text": "hi"}).json
    rooms = {r["name"]: r["last_id"] for r in alice.get("/api/rooms").json["rooms"]}
    assert rooms == {"general": "0-0", "dev-talk_2": sent["id"]}


def test_room_names_are_validated(alice):
    for bad in ["", "Upper", "with space", "x" * 65, "{general}", "a*", "é"]:
        response = alice.post("/api/rooms", json={"name": bad})
        assert response.status_code == 400, bad
        assert response.json["error"] == "bad_room"
    assert alice.post("/api/rooms", json={"name": "x" * 64}).status_code == 201


def test_unknown_room_is_404_everywhere(alice):
    for method, url in [("post", "/api/rooms/nope/messages"), ("get", "/api/rooms/nope/messages"),
                        ("get", "/api/rooms/nope/events"), ("get", "/api/rooms/nope/poll")]:
        response = getattr(alice, method)(url, json={"text": "x"} if method == "post" else None)
        assert response.status_code == 404, url
        assert response.json["error"] == "unknown_room"
