// "Call me": the bridge dials this page as it would a phone. The gateway places an outbound call
// (/phone/call-me: POST /calls' own code, without the page ever holding its token) through the local
// Twilio REST stand-in, which rings this page instead of a phone (softphone/browser_line.py). The page
// shows the incoming call; Answer opens the microphone and plays Twilio's side of the stream, as for a
// call the page places, through the stand-in's relay (only Twilio can sign the stream's upgrade). The
// stand-in sends the answering-machine verdict and the call's status to the bridge, and its status
// here; Decline ends the call busy.

const ENDED = ['completed', 'busy', 'no-answer', 'canceled', 'failed'];
const RECHECK_MS = 5000; // while idle, how often the page asks again whether "Call me" works here

/** Wires the "Call me" button; ``Call`` is the page's call class, ``page`` its state and hooks. */
export function setupCallMe(Call, page) {
  const $ = (id) => document.getElementById(id);
  const offer = { available: false, why: 'Checking whether the bridge can call this page…', line: '' };

  class IncomingCall extends Call {
    constructor(placed) {
      super();
      this.ids.callSid = placed.call_sid;
      this.line = `${placed.line}/browser/calls/${placed.call_sid}`;
      this.ringing = true;
    }

    ring() {
      Object.assign(page.stats, page.fresh(), { callSid: this.ids.callSid, incoming: true, lineStatus: '' });
      page.setState('ringing', 'Calling you…');
      this.lineEvents = new EventSource(`${this.line}/events`);
      this.lineEvents.onmessage = ({ data }) => this.lineStatus(JSON.parse(data));
    }

    lineStatus({ status, from }) {
      page.stats.lineStatus = status;
      if (status === 'ringing' && !this.over && this.ringing) page.setState('ringing', `Incoming call from ${from}`);
      if (!ENDED.includes(status)) return page.render();
      this.lineEvents.close();
      if (!this.over) this.end(`the call ended: ${status}`);
      else page.setState('ended', `${page.stats.status} (${status})`);
    }

    async answer() {
      this.ringing = false;
      page.setState('connecting', 'Opening the microphone…');
      await this.openAudio(); // first: the Answer click is the user gesture the autoplay policy wants
      if (this.over) return;
      await this.listen();
      const answer = await fetch(`${this.line}/answer`, { method: 'POST' });
      const body = await answer.json();
      if (this.over) return;
      if (!answer.ok) throw new Error(`the line answered HTTP ${answer.status}: ${body.error}`);
      this.ids.accountSid = body.account_sid;
      this.twiml = { streamUrl: body.stream_url, parameters: body.parameters, redirect: null, verbs: [] };
      this.openStream();
    }

    async decline() {
      this.ringing = false;
      this.end('you declined');
      const answer = await fetch(`${this.line}/decline`, { method: 'POST' });
      if (!answer.ok) page.problem(`decline: HTTP ${answer.status}: ${(await answer.json()).error}`);
    }

    hangup() {
      if (this.ringing) return this.decline();
      return super.hangup();
    }

    async closed(code) {
      // The stand-in plays the rest of Twilio's part (the <Redirect>, the status callback).
      if (this.over) return;
      if (!this.started) return this.end(`the stream could not open (Twilio 31920, close ${code})`);
      this.end('the bridge ended the call');
    }
  }

  async function check() {
    try {
      const answer = await fetch('/phone/call-me');
      Object.assign(offer, await answer.json());
      if (offer.available) {
        // The stand-in is a separate process: is it there to ring this page?
        const line = await fetch(`${offer.line}/browser`).catch(() => null);
        if (!line || !line.ok) {
          const why = `the Twilio stand-in is not answering at ${offer.line}: start it with make phone-line`;
          Object.assign(offer, { available: false, why });
        }
      }
    } catch (error) {
      Object.assign(offer, { available: false, why: `cannot ask the bridge: ${error.message}` });
    }
    page.render();
  }

  async function callMe() {
    if (page.current() || !offer.available) return;
    page.setState('idle', 'Asking the bridge to call you…');
    const answer = await fetch('/phone/call-me', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}',
    });
    const body = await answer.json();
    if (answer.status !== 201) {
      page.problem(`Call me: HTTP ${answer.status}: ${body.error}`);
      return page.setState('idle', `No call: ${body.error}`);
    }
    const call = new IncomingCall(body);
    page.adopt(call);
    call.ring();
  }

  const fail = (call) => (error) => {
    page.problem(error.message);
    call.end(error.message);
  };
  $('call-me').addEventListener('click', () => callMe().catch((error) => page.problem(error.message)));
  $('answer').addEventListener('click', () => {
    const call = page.current();
    if (call && call.ringing) call.answer().catch(fail(call));
  });
  $('decline').addEventListener('click', () => {
    const call = page.current();
    if (call && call.ringing) call.decline().catch(fail(call));
  });
  setInterval(() => !page.current() && check(), RECHECK_MS);
  check();

  return function draw() {
    const button = $('call-me');
    button.disabled = !offer.available || Boolean(page.current());
    $('call-me-why').textContent = offer.available
      ? `The bridge dials this page (${offer.number}) as it would a phone: an outbound call, answered here.`
      : `Not here: ${offer.why}.`;
    page.stats.callMe = { available: offer.available, why: offer.why };
  };
}
