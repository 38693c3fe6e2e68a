"""The console without a daemon: a plain banner on every screen, never a traceback."""

from pathlib import Path

from console.app import ConnectionBanner, ConsoleApp
from console.base import ConsoleScreen


async def test_console_without_daemon_says_so_on_every_screen_and_quits(tmp_path: Path) -> None:
    app = ConsoleApp(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(50):
            if app.disconnect_reason:
                break
            await pilot.pause(0.05)
        assert not app.connected
        for key in ["2", "3", "4", "5", "6", "1"]:
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, ConsoleScreen)
            banner = app.screen.query_one(ConnectionBanner)
            assert banner.has_class("-shown")
            assert "The appliance daemon is not running" in str(banner.render())
            assert str(tmp_path) in str(banner.render())
        await pilot.press("q")
    assert app.return_code == 0
