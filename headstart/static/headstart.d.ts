/**
 * Types of Headstart's JavaScript client (headstart.js, the classic script, which defines the
 * global `Headstart`; headstart.mjs, the ES module, whose default export it is). The kit's
 * options, theming and events: docs/kit.md; identity: docs/identity.md.
 */

export interface HeadstartOptions {
  /** The `frontend` key (readable in the page; see docs/identity.md). */
  apiKey?: string;
  /** Headstart's address, e.g. "https://headstart.example.com" (default: the page's origin). */
  baseUrl?: string;
  /** The signed-in user and its hash, from the product's backend: as identify(userId, userHash). */
  userId?: string;
  userHash?: string;
  /** How long decide() waits before answering from the last decision (800 ms). */
  timeoutMs?: number;
  batchSize?: number;
  flushMs?: number;
  /** The ruleset signing key (JWK) to pin; otherwise the first one fetched. */
  rulesetKey?: JsonWebKey;
  storage?: Pick<Storage, "getItem" | "setItem" | "removeItem">;
  anonymousPrefix?: string;
}

/** Where a request comes from; `timezone` (IANA) is the browser's unless given. */
export interface RequestContext {
  device_type?: string;
  os?: string;
  locale?: string;
  country?: string;
  referrer?: string;
  app_version?: string;
  timezone?: string;
  [field: string]: unknown;
}

export interface StepShown {
  id: string;
  kind: string;
  title: string;
}

/** One eligible journey step, in order (the checklist). */
export interface JourneyStep {
  id: string;
  title: string;
  url: string | null;
  done: boolean;
}

export type Placement = "top" | "bottom" | "left" | "right" | "auto";

/** A tour step, rendered in the user's locale. */
export interface TourStep {
  /** A CSS selector. */
  target: string;
  title: string;
  body: string;
  placement: Placement;
}

export interface TutorialShown {
  id: string;
  variant: string;
  eligible: string[];
  surface?: "tour" | "tooltip";
  tour?: TourStep[];
  /** The step index to continue from (after a reload, on another page or device). */
  resume_at?: number;
}

export type Surface = "tour" | "tooltip" | "banner";

export interface SurfacePermission {
  show: boolean;
  /** Why not, when `show` is false (pacing). */
  reason: string;
}

export interface Decision {
  decision_id: string;
  step: StepShown | null;
  tutorial: TutorialShown | null;
  message: string;
  step_message: string;
  flags: Record<string, unknown>;
  segments: string[];
  experiments: Record<string, string>;
  completed_steps: string[];
  personalized: boolean;
  explain: string[];
  activation_probability?: number | null;
  recommended_features?: string[];
  catalog_version: number;
  journey?: JourneyStep[];
  surfaces?: Partial<Record<Surface, SurfacePermission>>;
  /** True when answered from the last decision because Headstart was slow or unreachable. */
  offline: boolean;
  offline_reason?: string;
}

/** The kit's texts (defaults per language: en, de, fr, es, pt, ar, he). */
export interface KitLabels {
  checklist: string;
  /** With {done} and {total}. */
  progress: string;
  complete: string;
  next: string;
  back: string;
  finish: string;
  close: string;
  /** With {n} and {total}. */
  step: string;
  gotIt: string;
  allSet: string;
  welcome: string;
  toggle: string;
  tip: string;
}

export interface MountOptions {
  /** Sent with every decision (locale and the browser's timezone added). */
  context?: RequestContext;
  /** Where the checklist goes: an element or a selector; default a fixed panel; false: none. */
  container?: Element | string | false;
  /** Where the banner goes (first child): default <body>; false: no banner. */
  banner?: Element | string | false;
  /** The kit's language and direction (ar, he: right to left); default the context's, <html lang>, the browser's. */
  locale?: string;
  labels?: Partial<KitLabels>;
  /** How long a tour step's target is waited for before the step is skipped (5000 ms). */
  targetTimeoutMs?: number;
  /** Called with each decision shown. */
  onDecision?: (decision: Decision) => void;
}

/** A kit mounted for one user. */
export interface Mount {
  readonly userId: string;
  readonly decision: Decision | null;
  /** Ask again (with `context` merged into the mount's) and show the answer. */
  refresh(context?: RequestContext): Promise<Decision>;
  /** Remove what the kit rendered, its listeners and its <html> classes. */
  unmount(): void;
}

export interface Ruleset {
  flags: { id: string; default: unknown; rules: { segments: string[]; rollout: number | null; value: unknown }[] }[];
  [key: string]: unknown;
}

/** Rejections from Headstart (403 for identity, 4xx for invalid requests). */
export interface HeadstartError extends Error {
  status?: number;
  code?: string;
  /** flush(): how many events were stored before the refusal. */
  stored?: number;
}

export declare class Headstart {
  constructor(options?: HeadstartOptions);
  /** The browser's anonymous visitor id ("anon-" + a random UUID), kept in localStorage. */
  static anonymousId(options?: { storage?: HeadstartOptions["storage"]; prefix?: string }): string;
  static evaluateFlags(ruleset: Ruleset, segments: string[], lastFlags?: Record<string, unknown> | null): Record<string, unknown>;
  static kitLabels(locale?: string, overrides?: Partial<KitLabels>): KitLabels;
  static isRtl(locale?: string): boolean;
  /** Adds the kit's stylesheet to the page (once). */
  static injectStyles(): void;

  anonymousId(): string;
  identify(userId: string, userHash?: string): void;
  reset(): void;
  decide(userId: string, context?: RequestContext): Promise<Decision>;
  mount(userId: string, options?: MountOptions): Promise<Mount>;
  flag(userId: string, flagId: string): unknown;
  flags(userId: string, context?: RequestContext): Promise<{ flags: Record<string, unknown>; [key: string]: unknown }>;
  selectTutorial(userId: string, which: { step: string } | { feature: string }, context?: RequestContext): Promise<Record<string, unknown>>;
  consent(userId: string, purposes: { analytics?: boolean; personalization?: boolean }): Promise<{ accepted: boolean; [key: string]: unknown }>;
  track(userId: string, type: string, props?: Record<string, unknown>, context?: RequestContext): Promise<number | void>;
  flush(): Promise<number>;
  loadRuleset(): Promise<Ruleset>;
}

export default Headstart;

type HeadstartClass = typeof Headstart;

declare global {
  /** Defined by the classic script (headstart.js). */
  var Headstart: HeadstartClass;
}
