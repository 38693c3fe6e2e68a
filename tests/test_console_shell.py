from pathlib import Path

from console.app import ConsoleApp


async def test_console_opens_shows_the_data_folder_and_quits(tmp_path: Path):
    app = ConsoleApp(tmp_path)
    async with app.run_test() as pilot:
        welcome = app.query_one("#welcome")
        assert str(tmp_path) in str(welcome.render())
        await pilot.press("q")
    assert app.return_code == 0
