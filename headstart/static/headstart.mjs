/*
 * Headstart's JavaScript client as an ES module: the classic script (headstart.js, beside this
 * file) run once, its class exported. Types: headstart.d.ts.
 *
 *   import Headstart from "https://headstart.example.com/static/headstart.mjs";
 *   const hs = new Headstart({ apiKey: FRONTEND_KEY, baseUrl: "https://headstart.example.com" });
 *   await hs.mount(session.userId, { context: { device_type: "desktop" } });
 *
 * Loaded from Headstart's origin by a page on another origin, a module needs that origin in
 * HEADSTART_CORS_ORIGINS (a classic script does not). The script also sets `window.Headstart`.
 */
import "./headstart.js";

const Headstart = globalThis.Headstart;

export { Headstart };
export default Headstart;
