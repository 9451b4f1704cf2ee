async def test_register_login_create_task(client, alice, make_task):
    task = await make_task(alice, title="hello")
    response = await client.get(f"/api/v1/tasks/{task['id']}", headers=alice.headers)
    assert response.status_code == 200
    assert response.json()["title"] == "hello"


async def test_live_client_commits(live_client):
    from tests.conftest import register_and_login

    user = await register_and_login(live_client, "carol")
    me = await live_client.get("/api/v1/auth/me", headers=user.headers)
    assert me.json()["username"] == "carol"
