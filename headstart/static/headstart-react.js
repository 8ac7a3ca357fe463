/*
 * Headstart for React (an ES module; React is the page's own: `import ... from "react"`, for a
 * bundler). `useHeadstart` mounts the kit for a user (tours, tooltips, the banner and the
 * <html> classes, docs/kit.md) and gives its decisions as state; `HeadstartChecklist` renders
 * the journey with React, with the same markup and styles as the kit's own checklist.
 *
 *   import { Headstart, useHeadstart, HeadstartChecklist } from "./headstart-react.js";
 *   const hs = new Headstart({ apiKey: FRONTEND_KEY, baseUrl: HEADSTART_URL });
 *   function Onboarding({ userId }) {
 *     const { decision } = useHeadstart(hs, userId, { context: { device_type: "desktop" } });
 *     return decision && <HeadstartChecklist decision={decision} />;
 *   }
 */
import { createElement as h, useEffect, useId, useState } from "react";
import Headstart from "./headstart.mjs";

export { Headstart };

/**
 * The kit mounted for `userId` (options as hs.mount's, except `container`: the checklist is
 * yours to render), mounted again when the user, the locale or the context change, unmounted
 * with the component. Returns { decision, error, loading, refresh(context) }.
 */
export function useHeadstart(hs, userId, options) {
  const o = options || {};
  const [state, setState] = useState({ decision: null, error: null, kit: null });
  const contextKey = JSON.stringify(o.context || {});
  useEffect(() => {
    if (!hs || !userId) return undefined;
    let live = true;
    let kit = null;
    const mountOptions = Object.assign({}, o, {
      container: false,
      onDecision: (decision) => {
        if (live) setState((s) => Object.assign({}, s, { decision, error: null }));
        if (o.onDecision) o.onDecision(decision);
      },
    });
    hs.mount(userId, mountOptions).then(
      (mounted) => {
        kit = mounted;
        if (live) setState((s) => Object.assign({}, s, { kit: mounted }));
        else mounted.unmount();
      },
      (error) => live && setState((s) => Object.assign({}, s, { error })),
    );
    return () => {
      live = false;
      if (kit) kit.unmount();
    };
  }, [hs, userId, o.locale, contextKey]); // eslint-disable-line react-hooks/exhaustive-deps
  return {
    decision: state.decision,
    error: state.error,
    loading: !state.decision && !state.error,
    refresh: (context) => (state.kit ? state.kit.refresh(context) : Promise.resolve(null)),
  };
}

/** The journey of a decision as a checklist: done steps marked, the decided one current
 * (aria-current="step"), a step's url as its link. */
export function HeadstartChecklist(props) {
  const { decision, locale = "en", labels } = props;
  const L = Headstart.kitLabels(locale, labels);
  const [open, setOpen] = useState(true);
  const id = useId();
  useEffect(() => Headstart.injectStyles(), []);
  const current = decision.step ? decision.step.id : null;
  const journey = decision.journey || (decision.step ? [Object.assign({ done: false }, decision.step)] : []);
  const done = journey.filter((s) => s.done).length;
  const count = (n) => Number(n).toLocaleString(locale);
  const progress = L.progress.replace("{done}", count(done)).replace("{total}", count(journey.length));
  const items = journey.map((s) => {
    const isCurrent = s.id === current;
    const title = s.title || s.id;
    return h("li", {
      key: s.id, className: "hs-item " + (s.done ? "hs-done" : isCurrent ? "hs-current" : "hs-todo"),
      "data-hs-step": s.id, "aria-current": isCurrent ? "step" : undefined,
    },
    h("span", { className: "hs-mark", "aria-hidden": "true" }, s.done ? "✓" : isCurrent ? "➜" : "○"),
    s.url ? h("a", { className: "hs-label", href: s.url }, title) : h("span", { className: "hs-label" }, title),
    s.done ? h("span", { className: "hs-sr" }, " " + L.complete) : null);
  });
  return h("section", {
    className: "hs-kit hs-card hs-checklist", "data-hs-surface": "checklist", "aria-labelledby": id + "t",
    dir: Headstart.isRtl(locale) ? "rtl" : "ltr", lang: locale,
  },
  h("div", { className: "hs-head" },
    h("h2", { className: "hs-title", id: id + "t" }, L.checklist),
    h("button", { className: "hs-close", type: "button", "aria-expanded": open, "aria-controls": id + "l",
      "aria-label": L.toggle, onClick: () => setOpen(!open) }, open ? "▾" : "▸")),
  h("p", { className: "hs-meta" }, current ? progress : L.allSet),
  h("progress", { className: "hs-progress", max: journey.length || 1, value: done, "aria-label": progress }),
  h("ol", { className: "hs-steps", id: id + "l", hidden: !open }, items));
}
