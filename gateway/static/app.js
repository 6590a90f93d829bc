// Lianfang control room: plain JS, no dependencies, nothing loaded from outside this server.
"use strict";

const I18N = {
  zh: {
    title: "联防监控中心",
    subtitle: "物联网监控与联防联控",
    broker: "消息代理", store: "存储", ingest: "接入", stream: "实时流",
    token: "令牌", regions: "区域", devices: "设备", all: "全部", allTypes: "全部类型",
    online: "在线", offline: "离线", disabled: "停用",
    state: "状态", deviceId: "设备编号", name: "名称", type: "类型", region: "区域", lastSeen: "最后上报",
    prev: "上一页", next: "下一页", pageInfo: "第 {from}–{to} 条，共 {total} 条",
    liveFeed: "实时事件", rejections: "拒收消息", never: "从未上报", noData: "暂无数据",
    tokenTitle: "输入访问令牌",
    tokenHelp: "令牌由管理员使用 lianfang users add 创建，仅保存在本浏览器中。",
    loginTitle: "登录", loginName: "用户名", loginPassword: "密码", loginTotp: "动态验证码（如已启用）",
    loginSubmit: "登录", loginFailed: "登录失败：用户名、密码或验证码错误，或账号已锁定。", useToken: "改用访问令牌",
    logout: "退出登录",
    save: "保存", wholeTree: "全部区域", agoS: "{n} 秒前", agoM: "{n} 分钟前", agoH: "{n} 小时前", agoD: "{n} 天前",
    statusOnline: "上线", statusOffline: "下线", dropped: "已丢弃 {n} 条（客户端过慢）",
    lvl_province: "省", lvl_city: "市", lvl_agency: "单位", lvl_building: "楼宇",
    type_gate: "门禁", type_vehicle: "公务车辆", type_energy_meter: "电能表", type_sensor: "传感器",
    ev_access: "通行", ev_door_forced: "强行开门", ev_door_held_open: "门长时间未关", ev_door_closed: "门已关闭",
    ev_request_to_exit: "出门请求", ev_tamper: "防拆报警", ev_ignition_on: "点火", ev_ignition_off: "熄火",
    ev_harsh_brake: "急刹车", ev_harsh_accel: "急加速", ev_power_cut: "断电", ev_driver_login: "司机登录",
    ev_power_loss: "失电", ev_power_restore: "恢复供电", ev_reset: "电表清零", ev_fault: "故障", ev_cmd_result: "指令结果",
    rs_not_json: "非 JSON", rs_not_object: "非对象", rs_too_large: "过大", rs_schema: "字段不合规",
    rs_bad_timestamp: "时间戳错误", rs_unknown_event: "未知事件", rs_forged_identity: "伪造身份",
    rs_unregistered_device: "未注册设备", rs_disabled_device: "已停用设备", rs_internal_error: "内部错误",
    alerts: "告警", close: "关闭", detail: "详情", timeline: "处置记录", cancel: "取消",
    sev_critical: "紧急", sev_major: "重要", sev_warning: "警告", sev_info: "提示",
    st_firing: "告警中", st_acknowledged: "已确认", st_resolved: "已解决",
    ack: "确认", resolve: "解决", ackTitle: "确认告警", resolveTitle: "解决告警",
    ackReason: "确认说明（可选，例如：保安已前往现场）", resolveReason: "解决原因（必填，例如：误报，已复位）",
    reasonRequired: "必须填写解决原因。", silenced: "已静默", silencedWhy: "已静默，不发送通知也不升级：{reason}（{who}，至 {until}）", flapping: "频繁抖动", repeats: "重复 {n} 次",
    escalated: "已升级 {n} 级", noAlerts: "当前无未处理告警", alertsOff: "告警服务未运行",
    alertsMore: "仅显示最新 {shown} 条，共 {total} 条", assignedTo: "负责人 {who}", ackedBy: "{who} 已确认",
    errForbidden: "无权操作：只读（查看员）账号不能确认或解决告警。",
    errAlreadyAcked: "该告警已被 {who} 确认，无需重复确认。", errNotOpen: "该告警已解决或已关闭，无法再操作。",
    errConflict: "操作冲突：{detail}", errNotFound: "告警不存在，或不在您的管辖范围内。",
    errInvalid: "输入无效：{detail}", errUnavailable: "告警服务暂不可用，请稍后重试。",
    errUnauthorized: "令牌无效或已过期，请重新输入。", errNetwork: "无法连接服务器，请检查网络后重试。",
    errOther: "操作失败（HTTP {status}）：{detail}", doneAck: "已确认告警 #{id}", doneResolve: "已解决告警 #{id}",
    f_id: "编号", f_rule: "规则", f_device: "设备", f_region: "区域", f_state: "状态", f_severity: "级别",
    f_started: "开始时间", f_updated: "更新时间", f_count: "触发次数", f_assignee: "负责人", f_active: "条件仍成立",
    f_ackBy: "确认人", f_ackReason: "确认说明", f_resolvedBy: "解决人", f_resolveReason: "解决原因",
    f_escalation: "升级级别", yes: "是", no: "否", noDetail: "无",
    tl_created: "告警产生", tl_ack: "确认", tl_resolve: "解决", tl_assign: "指派", tl_comment: "备注",
    role_admin: "管理员", role_operator: "值班员", role_viewer: "查看员",
    role_sysadmin: "系统管理员", role_secadmin: "安全管理员", role_auditor: "安全审计员",
    incidents: "联防事件", incActive: "处置中", topRisks: "当前最高风险", tasks: "部门任务", linkage: "联动处置",
    members: "关联告警", noIncidents: "当前无联防事件", incRef: "事件 I{id}", partial: "部分可见",
    ist_open: "待处置", ist_investigating: "处置中", ist_resolved: "已解除", ist_closed: "已关闭",
    tst_open: "待确认", tst_acknowledged: "已确认", tst_closed: "已完成", overdue: "已超时",
    dept_security: "安保", dept_vehicles: "车管", dept_energy: "能源", dept_it: "信息",
    incAck: "确认事件", incClose: "关闭事件", taskAck: "确认任务", taskClose: "完成任务",
    propose_lock: "建议锁闭门禁", propose_unlock: "建议解锁门禁", confirm: "批准执行", decline: "拒绝",
    act_lock: "锁闭", act_unlock: "解锁", ast_proposed: "待批准", ast_declined: "已拒绝", ast_sent: "已下发",
    ast_succeeded: "已执行", ast_failed: "失败", ast_expired: "已过期",
    cause_false_alarm: "误报", cause_handled: "已处置", cause_maintenance: "维护", cause_device_fault: "设备故障",
    cause_duplicate: "重复", cause_other: "其他", f_scope: "范围", f_type: "类型", f_opened: "发生时间",
    f_cause: "关闭原因", f_members: "关联告警数", hiddenMembers: "另有 {n} 条不在您的管辖范围内",
    noRisk: "暂无风险数据", riskScore: "风险 {n}", incDone: "操作成功", noTasks: "无",
    readOnly: "仅可查看（事件范围高于您的辖区）",
    v_monitor: "监控", v_device: "设备详情", v_map: "车辆地图", v_silences: "静默", v_rules: "告警规则",
    v_audit: "审计日志", v_users: "用户管理",
    k_devices: "设备在线", k_alerts: "未处理告警", k_incidents: "处置中事件", k_energy: "今日用电", k_vehicles: "车辆使用",
    vsBaseline: "基线 {base} kWh，当前为基线的 {pct}%", noBaseline: "暂无基线（历史数据不足）", vehInUse: "使用中 / 总数",
    asOf: "数据时间 {at}", overviewOff: "总览暂不可用",
    deviceIdPh: "设备编号", open: "打开", field: "字段", range: "时间范围", r_1h: "最近 1 小时", r_2h: "最近 2 小时",
    r_6h: "最近 6 小时", r_24h: "最近 24 小时", r_7d: "最近 7 天", r_30d: "最近 30 天", deviceAlerts: "该设备的告警",
    pickDevice: "请在设备列表中点击一台设备，或输入设备编号。", firmware: "固件", counters: "数据质量",
    countersText: "消息 {m}，缺号 {g}，重复 {d}，拒收 {r}", silenceDevice: "静默此设备", nPoints: "{n} 个数据点",
    perBucket: "每 {b} 聚合", noDeviceAlerts: "该设备没有告警",
    trip: "行程", mapInfo: "显示 {shown} 辆，共 {total} 辆", tilesOn: "底图：本单位瓦片服务", tilesOff: "底图：无（按区域坐标绘制）",
    noCoords: "没有带坐标的区域或车辆", inUse: "使用中", parked: "停放", tripOf: "{id} 的行程（{n} 个点）",
    tripHint: "点击车辆查看行程",
    siActive: "生效中", siNew: "新建静默", siReason: "原因", whyReason: "原因（必填，记入审计日志）", siCreator: "创建人", siStarts: "开始", siEnds: "结束",
    siEnd: "结束静默", siHelp: "静默期间匹配的告警不发送通知、不升级。范围可为区域、设备和/或规则。",
    siCreate: "创建静默", siHours: "持续时间（小时）", siApprover: "批准人（可选，须为另一位管理员）",
    siCreated: "已创建静默 #{id}", siEnded: "已结束静默 #{id}", noSilences: "没有静默", allRules: "全部规则",
    overrides: "覆盖配置", ovEnabled: "启用", ovParams: "参数", ovSource: "来源", ovNew: "新增覆盖", ovEdit: "修改覆盖",
    ovHelp: "覆盖在所选区域或设备上生效；停用规则仅限该区域的管理员。", noOverrides: "没有覆盖配置", inherit: "继承",
    badJson: "参数不是有效的 JSON", edit: "修改", delete: "删除",
    auVerify: "校验哈希链", auExport: "导出 CSV", auActor: "操作人", auAction: "操作", auTarget: "对象",
    auAt: "时间", auSource: "来源", auOutcome: "结果", auVerified: "校验", auOk: "完好", auBroken: "被篡改",
    auChainOk: "哈希链完好：共 {n} 条记录，最新序号 {seq}", auChainBad: "哈希链发现 {n} 处问题：",
    auExported: "已导出 {kb} KB", filter: "筛选",
    usNew: "新建用户", usRole: "角色", usPerson: "人员", usSecurity: "安全", usPw: "已设密码", usPwBtn: "重置密码",
    usLocked: "锁定至 {until}", usRoleBtn: "角色与范围", usDisable: "停用", usEnable: "启用", usEnabled: "启用中",
    usNewHelp: "新用户为所选区域的查看员；角色由安全管理员授予。", usCreate: "创建", usCreated: "已创建用户 {name}",
    usRoleHelp: "三员分立：同一人只能担任系统管理员、安全管理员、安全审计员之一。", myScope: "我的范围",
    comment: "备注", commentText: "备注内容", assign: "指派", silence: "静默", noteLabel: "处置说明",
    required: "请填写：{field}",
    incResolve: "解除事件", resolveReasonInc: "解除原因（必填）",
    assignReasonInc: "指派原因（必填）", unassignHint: "留空即取消指派",
    // reports view (reports.js)
    v_reports: "报告", rpCoverage: "数据覆盖与质量", rpVehicles: "公务用车", rpEnergy: "能耗", rpScorecard: "区域评分卡",
    rpBuild: "生成报告", rpCsv: "下载 CSV", rpHtml: "下载 HTML", rpFindings: "待办与建议", rpBuilding: "正在生成报告…",
    rpNone: "无", rpPeriod: "统计周期（北京时间）：{start} – {end}", rpMoreRows: "仅显示前 {n} 行，完整内容请下载 CSV 或 HTML。",
    rpNotAvailable: "该报告暂不可用：{detail}", rpDownloaded: "已下载 {name}",
  },
  en: {
    title: "Lianfang Control Room",
    subtitle: "IoT monitoring and joint risk control",
    broker: "Broker", store: "Store", ingest: "Ingest", stream: "Live",
    token: "Token", regions: "Regions", devices: "Devices", all: "All", allTypes: "All types",
    online: "Online", offline: "Offline", disabled: "Disabled",
    state: "State", deviceId: "Device ID", name: "Name", type: "Type", region: "Region", lastSeen: "Last seen",
    prev: "Prev", next: "Next", pageInfo: "{from}–{to} of {total}",
    liveFeed: "Live events", rejections: "Rejected messages", never: "never", noData: "No data yet",
    tokenTitle: "Enter your API token",
    tokenHelp: "An administrator creates tokens with lianfang users add; it is kept in this browser only.",
    loginTitle: "Log in", loginName: "User name", loginPassword: "Password", loginTotp: "One-time code (if enabled)",
    loginSubmit: "Log in", loginFailed: "Login failed: wrong name, password or code, or the account is locked.",
    useToken: "Use an API token instead", logout: "Log out",
    save: "Save", wholeTree: "All regions", agoS: "{n}s ago", agoM: "{n} min ago", agoH: "{n} h ago", agoD: "{n} d ago",
    statusOnline: "came online", statusOffline: "went offline", dropped: "{n} dropped (client too slow)",
    lvl_province: "Prov", lvl_city: "City", lvl_agency: "Agency", lvl_building: "Bldg",
    type_gate: "Gate", type_vehicle: "Vehicle", type_energy_meter: "Energy meter", type_sensor: "Sensor",
    ev_access: "Access", ev_door_forced: "Door forced", ev_door_held_open: "Door held open", ev_door_closed: "Door closed",
    ev_request_to_exit: "Request to exit", ev_tamper: "Tamper", ev_ignition_on: "Ignition on",
    ev_ignition_off: "Ignition off", ev_harsh_brake: "Harsh brake", ev_harsh_accel: "Harsh acceleration",
    ev_power_cut: "Power cut", ev_driver_login: "Driver login", ev_power_loss: "Power loss",
    ev_power_restore: "Power restored", ev_reset: "Meter reset", ev_fault: "Fault", ev_cmd_result: "Command result",
    rs_not_json: "not JSON", rs_not_object: "not an object", rs_too_large: "too large", rs_schema: "schema",
    rs_bad_timestamp: "bad timestamp", rs_unknown_event: "unknown event", rs_forged_identity: "forged identity",
    rs_unregistered_device: "unregistered device", rs_disabled_device: "disabled device",
    rs_internal_error: "internal error",
    alerts: "Alerts", close: "Close", detail: "Detail", timeline: "Timeline", cancel: "Cancel",
    sev_critical: "Critical", sev_major: "Major", sev_warning: "Warning", sev_info: "Info",
    st_firing: "Firing", st_acknowledged: "Acknowledged", st_resolved: "Resolved",
    ack: "Ack", resolve: "Resolve", ackTitle: "Acknowledge alert", resolveTitle: "Resolve alert",
    ackReason: "Note (optional, e.g. guard on the way)", resolveReason: "Reason (required, e.g. false alarm, reset)",
    reasonRequired: "A reason is required to resolve.", silenced: "Silenced", silencedWhy: "Silenced, no notification or escalation: {reason} ({who}, until {until})", flapping: "Flapping",
    repeats: "{n} times", escalated: "Escalated L{n}", noAlerts: "No open alerts", alertsOff: "Alerts are not running",
    alertsMore: "Newest {shown} of {total}", assignedTo: "Assignee {who}", ackedBy: "acked by {who}",
    errForbidden: "Not allowed: read-only (viewer) accounts cannot acknowledge or resolve alerts.",
    errAlreadyAcked: "Already acknowledged by {who}.", errNotOpen: "This alert is already resolved.",
    errConflict: "Conflict: {detail}", errNotFound: "No such alert, or it is outside your regions.",
    errInvalid: "Invalid input: {detail}", errUnavailable: "The alert service is unavailable; retry later.",
    errUnauthorized: "The token is invalid or expired; enter it again.",
    errNetwork: "Cannot reach the server; check the network and retry.",
    errOther: "Failed (HTTP {status}): {detail}", doneAck: "Alert #{id} acknowledged",
    doneResolve: "Alert #{id} resolved",
    f_id: "ID", f_rule: "Rule", f_device: "Device", f_region: "Region", f_state: "State", f_severity: "Severity",
    f_started: "Started", f_updated: "Updated", f_count: "Fired", f_assignee: "Assignee", f_active: "Still active",
    f_ackBy: "Acknowledged by", f_ackReason: "Ack note", f_resolvedBy: "Resolved by", f_resolveReason: "Resolve reason",
    f_escalation: "Escalation", yes: "yes", no: "no", noDetail: "none",
    tl_created: "Raised", tl_ack: "Acknowledged", tl_resolve: "Resolved", tl_assign: "Assigned", tl_comment: "Comment",
    role_admin: "admin", role_operator: "operator", role_viewer: "viewer",
    role_sysadmin: "system administrator", role_secadmin: "security administrator", role_auditor: "security auditor",
    incidents: "Incidents", incActive: "Active", topRisks: "Top risks now", tasks: "Department tasks",
    linkage: "Linkage actions", members: "Member alerts", noIncidents: "No incidents", incRef: "Incident I{id}",
    partial: "partly visible",
    ist_open: "Open", ist_investigating: "Investigating", ist_resolved: "Resolved", ist_closed: "Closed",
    tst_open: "Open", tst_acknowledged: "Acknowledged", tst_closed: "Done", overdue: "Overdue",
    dept_security: "Security", dept_vehicles: "Vehicles", dept_energy: "Energy", dept_it: "IT",
    incAck: "Acknowledge", incClose: "Close", taskAck: "Acknowledge task", taskClose: "Close task",
    propose_lock: "Propose: lock gates", propose_unlock: "Propose: unlock gates", confirm: "Confirm", decline: "Decline",
    act_lock: "lock", act_unlock: "unlock", ast_proposed: "Proposed", ast_declined: "Declined", ast_sent: "Sent",
    ast_succeeded: "Done", ast_failed: "Failed", ast_expired: "Expired",
    cause_false_alarm: "false alarm", cause_handled: "handled", cause_maintenance: "maintenance",
    cause_device_fault: "device fault", cause_duplicate: "duplicate", cause_other: "other", f_scope: "Scope",
    f_type: "Type", f_opened: "Opened", f_cause: "Cause", f_members: "Member alerts",
    hiddenMembers: "{n} more outside your regions", noRisk: "No risk data", riskScore: "risk {n}", incDone: "Done",
    noTasks: "none", readOnly: "Read only (the incident's scope lies above your regions)",
    v_monitor: "Monitor", v_device: "Device", v_map: "Vehicle map", v_silences: "Silences", v_rules: "Alert rules",
    v_audit: "Audit log", v_users: "Users",
    k_devices: "Devices online", k_alerts: "Open alerts", k_incidents: "Active incidents", k_energy: "Energy today",
    k_vehicles: "Vehicles in use",
    vsBaseline: "baseline {base} kWh, now {pct}% of it", noBaseline: "no baseline yet (not enough history)",
    vehInUse: "in use / total", asOf: "as of {at}", overviewOff: "overview unavailable",
    deviceIdPh: "device ID", open: "Open", field: "Field", range: "Range", r_1h: "last hour", r_2h: "last 2 hours",
    r_6h: "last 6 hours", r_24h: "last 24 hours", r_7d: "last 7 days", r_30d: "last 30 days",
    deviceAlerts: "Alerts of this device",
    pickDevice: "Click a device in the device list, or enter its ID.", firmware: "Firmware", counters: "Data quality",
    countersText: "{m} messages, {g} gaps, {d} duplicates, {r} rejected", silenceDevice: "Silence this device",
    nPoints: "{n} points", perBucket: "one per {b}", noDeviceAlerts: "No alerts for this device",
    trip: "Trip", mapInfo: "{shown} of {total} vehicles", tilesOn: "Base map: your tile server",
    tilesOff: "Base map: none (drawn from region coordinates)", noCoords: "No region or vehicle with coordinates",
    inUse: "in use", parked: "parked", tripOf: "trip of {id} ({n} points)", tripHint: "click a vehicle for its trip",
    siActive: "Active", siNew: "New silence", siReason: "Reason", whyReason: "Reason (required, written to the audit log)", siCreator: "Created by", siStarts: "Starts",
    siEnds: "Ends", siEnd: "End silence",
    siHelp: "Matching alerts are neither notified nor escalated while it lasts. Scope: a region, a device and/or a rule.",
    siCreate: "Create silence", siHours: "Duration (hours)", siApprover: "Approver (optional, another admin)",
    siCreated: "Silence #{id} created", siEnded: "Silence #{id} ended", noSilences: "No silences", allRules: "all rules",
    overrides: "Overrides", ovEnabled: "Enabled", ovParams: "Params", ovSource: "Source", ovNew: "New override",
    ovEdit: "Edit override",
    ovHelp: "An override applies in the region or to the device; switching a rule off is for that region's admin.",
    noOverrides: "No overrides", inherit: "inherited", badJson: "The params are not valid JSON", edit: "Edit",
    delete: "Delete",
    auVerify: "Verify the chain", auExport: "Export CSV", auActor: "Actor", auAction: "Action", auTarget: "Target",
    auAt: "Time", auSource: "Source", auOutcome: "Outcome", auVerified: "Check", auOk: "intact", auBroken: "tampered",
    auChainOk: "Hash chain intact: {n} records, last seq {seq}", auChainBad: "Hash chain: {n} problems:",
    auExported: "Exported {kb} KB", filter: "Filter",
    usNew: "New user", usRole: "Role", usPerson: "Person", usSecurity: "Security", usPw: "password set",
    usPwBtn: "Reset password", usLocked: "locked until {until}", usRoleBtn: "Role and scope", usDisable: "Disable",
    usEnable: "Enable", usEnabled: "enabled",
    usNewHelp: "A new user is a viewer of the chosen region; the security administrator gives roles.",
    usCreate: "Create", usCreated: "User {name} created",
    usRoleHelp: "三员分立: one person holds at most one of system administrator, security administrator, auditor.",
    myScope: "my scope", comment: "Comment", commentText: "Comment", assign: "Assign", silence: "Silence",
    noteLabel: "Note", required: "Please fill in: {field}",
    incResolve: "Resolve incident", resolveReasonInc: "Why it is resolved (required)",
    assignReasonInc: "Why (required)", unassignHint: "empty: unassign",
    // reports view (reports.js)
    v_reports: "Reports", rpCoverage: "Data coverage and quality", rpVehicles: "Vehicles", rpEnergy: "Energy",
    rpScorecard: "Region scorecard", rpBuild: "Build report", rpCsv: "Download CSV", rpHtml: "Download HTML",
    rpFindings: "Findings", rpBuilding: "Building the report…", rpNone: "none",
    rpPeriod: "Period (Beijing time): {start} – {end}", rpMoreRows: "First {n} rows only; download the CSV or HTML for all.",
    rpNotAvailable: "This report is not available: {detail}", rpDownloaded: "Downloaded {name}",
  },
};
const CRITICAL = new Set(["door_forced", "tamper", "power_cut", "power_loss"]);
const WARNING = new Set(["door_held_open", "harsh_brake", "harsh_accel", "fault"]);
const FEED_MAX = 200;
const PAGE = 50;
const TOKEN_KEY = "lianfang.token";
const LANG_KEY = "lianfang.lang";

const state = {
  lang: localStorage.getItem(LANG_KEY) === "en" ? "en" : "zh",
  token: "",
  region: null,
  regionNames: {},
  offset: 0,
  total: 0,
  feedCount: 0,
  streamAbort: null,
  subtree: null,
  alertIds: null,
  alertsTimer: null,
  drawerId: null,
  action: null,
  me: null,  // GET /api/v1/me: name, role, region_id, actions
  risk: {},  // region id -> rolled-up risk score (GET /api/v1/risk)
  incDrawerId: null,
  incTimer: null,
};

function t(key, vars) {
  let s = (I18N[state.lang] && I18N[state.lang][key]) || I18N.zh[key] || key;
  for (const [k, v] of Object.entries(vars || {})) s = s.replace("{" + k + "}", String(v));
  return s;
}
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function applyLang() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  document.querySelectorAll("[data-i18n]").forEach((n) => { n.textContent = t(n.dataset.i18n); });
  document.querySelectorAll("[data-i18n-ph]").forEach((n) => { n.placeholder = t(n.dataset.i18nPh); });
  $("lang").textContent = state.lang === "zh" ? "English" : "中文";
}

// Times are instants; the control room reads them in Beijing time whatever the browser's own zone is.
const TZ = "Asia/Shanghai";
function silencedWhy(a) {
  // Why nothing is sent for this alert (notifications and escalation are held back by these silences).
  return (a.silenced_by || [])
    .map((x) => t("silencedWhy", { reason: x.reason, who: x.creator, until: fmtFull(x.ends_at) }))
    .join("\n");
}
function fmtTime(ms) {
  if (ms === null || ms === undefined) return t("never");
  return new Date(ms).toLocaleTimeString(state.lang === "zh" ? "zh-CN" : "en-GB", { hour12: false, timeZone: TZ });
}
function ago(ms) {
  if (ms === null || ms === undefined) return t("never");
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return t("agoS", { n: s });
  if (s < 3600) return t("agoM", { n: Math.floor(s / 60) });
  if (s < 86400) return t("agoH", { n: Math.floor(s / 3600) });
  return t("agoD", { n: Math.floor(s / 86400) });
}

// --- token -------------------------------------------------------------------------------------------------

function takeTokenFromHash() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  const al = /(?:^#|&)alert=(\d+)/.exec(location.hash);
  const rg = /(?:^#|&)region=([a-z0-9-]+)/.exec(location.hash);
  const inc = /(?:^#|&)incident=(\d+)/.exec(location.hash);
  if (inc) state.incDrawerId = Number(inc[1]);  // a link to one incident (e.g. from a notification)
  if (al) state.drawerId = Number(al[1]);  // a link to one alert (e.g. from a notification) opens its drawer
  if (rg) state.region = rg[1];  // a link to one region's view
  if (m || al || rg || inc) {
    if (m) localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = localStorage.getItem(TOKEN_KEY) || "";
}
function askToken() {
  const d = $("token-dialog");
  if (!d.open) {
    $("token-input").value = "";
    d.showModal();
  }
}
// Login (POST /api/v1/auth/login): the session token is kept where a pasted token is kept.
function askLogin() {
  const d = $("login-dialog");
  if (!d.open && !$("token-dialog").open) {
    $("login-password").value = "";
    $("login-totp").value = "";
    $("login-error").textContent = "";
    d.showModal();
  }
}
async function submitLogin() {
  const body = { name: $("login-name").value.trim(), password: $("login-password").value };
  const code = $("login-totp").value.trim();
  if (code) body.totp = code;
  let r;
  try {
    r = await fetch("/api/v1/auth/login", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
  } catch (e) {
    $("login-error").textContent = t("errNetwork");
    return;
  }
  if (!r.ok) {
    $("login-error").textContent = t("loginFailed");
    return;
  }
  const answer = await r.json();
  localStorage.setItem(TOKEN_KEY, answer.token);
  state.token = answer.token;
  $("login-dialog").close();
  start();
}
async function logout() {
  if (state.token) {
    try {
      await fetch("/api/v1/auth/logout", { method: "POST", headers: { Authorization: "Bearer " + state.token } });
    } catch (e) { /* the token is forgotten here anyway */ }
  }
  localStorage.removeItem(TOKEN_KEY);
  state.token = "";
  if (state.streamAbort) state.streamAbort.abort();
  askLogin();
}

class Unauthorized extends Error {}

async function api(path) {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const r = await fetch("/api/v1" + path, { headers });
  if (r.status === 401) {
    askLogin();
    throw new Unauthorized();
  }
  if (!r.ok && r.status !== 503) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// --- who am I: the role decides which actions the page offers (the server checks them anyway) ---------------

async function loadMe() {
  try {
    state.me = await api("/me");
  } catch (e) {
    state.me = null;  // unknown: offer no action
    if (e instanceof Unauthorized) throw e;
  }
  const me = state.me;
  $("user").textContent = me ? me.name + " · " + t("role_" + me.role) : "";
  document.body.classList.toggle("can-act", canAct());
  document.body.dataset.role = me ? me.role : "";
  applyRole();  // views.js: the views and buttons of this role
}
function can(action) {  // GET /api/v1/me "actions" (gateway/actions.py): a button only for what the server allows
  return !!(state.me && (state.me.actions || []).includes(action));
}
function canAct() {
  return can("alerts.ack");
}

// --- health ------------------------------------------------------------------------------------------------

function setPill(id, ok, title) {
  const p = $(id);
  p.classList.toggle("ok", ok === true);
  p.classList.toggle("bad", ok === false);
  p.title = title || "";
}
async function loadHealth() {
  try {
    const h = await api("/health/ready");
    const c = h.checks || {};
    setPill("h-broker", c.broker && c.broker.ok, JSON.stringify(c.broker || {}));
    setPill("h-store", c.store && c.registry && c.store.ok && c.registry.ok, JSON.stringify({ store: c.store, registry: c.registry }));
    setPill("h-ingest", c.ingest && c.ingest.ok, JSON.stringify(c.ingest || {}));
  } catch (e) {
    for (const id of ["h-broker", "h-store", "h-ingest"]) setPill(id, false, String(e));
  }
}

// --- regions -----------------------------------------------------------------------------------------------

function renderNode(node) {
  const li = el("li");
  const row = el("div", "node" + (state.region === node.id ? " sel" : ""));
  row.dataset.id = node.id;
  const label = el("span");
  label.append(el("span", "lvl", t("lvl_" + node.level)), el("span", null, node.name));
  label.className = "name";
  label.title = node.name + " (" + node.id + ")";
  const cnt = el("span", "cnt");
  cnt.append(el("span", "on", node.devices.online), "/", el("span", "off", node.devices.offline), "/" + node.devices.total);
  cnt.title = t("online") + " / " + t("offline") + " / " + t("all");
  row.append(label, cnt);
  row.addEventListener("click", () => {
    state.region = state.region === node.id ? null : node.id;
    state.offset = 0;
    refreshAll();
  });
  li.append(row);
  state.regionNames[node.id] = node.name;
  if (node.children && node.children.length) {
    const ul = el("ul");
    node.children.forEach((c) => ul.append(renderNode(c)));
    li.append(ul);
  }
  return li;
}
async function loadRegions() {
  const data = await api("/regions");
  const tree = $("tree");
  tree.replaceChildren();
  const ul = el("ul");
  data.regions.forEach((n) => ul.append(renderNode(n)));
  tree.append(data.regions.length ? ul : el("div", "empty", t("noData")));
  state.subtree = state.region ? collectSubtree(data.regions, state.region, false, new Set()) : null;
  applyRisk();
}

// --- devices -----------------------------------------------------------------------------------------------

async function loadDevices() {
  const q = new URLSearchParams({ limit: PAGE, offset: state.offset });
  if (state.region) q.set("region", state.region);
  if ($("f-online").value) q.set("online", $("f-online").value);
  if ($("f-type").value) q.set("type", $("f-type").value);
  const data = await api("/devices?" + q);
  state.total = data.total;
  const body = $("dev-body");
  body.replaceChildren();
  for (const d of data.items) {
    const tr = el("tr");
    tr.dataset.id = d.id;
    const st = el("td");
    const cls = !d.enabled ? "dis" : d.online ? "on" : "off";
    st.append(el("span", "dot " + cls), t(!d.enabled ? "disabled" : d.online ? "online" : "offline"));
    const seen = el("td", "seen", ago(d.last_seen_ms));
    seen.dataset.ms = d.last_seen_ms === null ? "" : d.last_seen_ms;
    seen.title = d.last_seen || "";
    tr.append(st, el("td", "id", d.id), el("td", null, d.name), el("td", null, t("type_" + d.type)),
      el("td", null, state.regionNames[d.region_id] || d.region_id), seen);
    body.append(tr);
  }
  if (!data.items.length) {
    const tr = el("tr");
    const td = el("td", "empty", t("noData"));
    td.colSpan = 6;
    tr.append(td);
    body.append(tr);
  }
  const from = data.total ? state.offset + 1 : 0;
  $("page-info").textContent = t("pageInfo", { from, to: state.offset + data.items.length, total: data.total });
  $("prev").disabled = state.offset === 0;
  $("next").disabled = state.offset + PAGE >= data.total;
  $("dev-scope").textContent = state.region ? state.regionNames[state.region] || state.region : t("wholeTree");
}

function touchDevice(id, ms) {
  const tr = document.querySelector('#dev-body tr[data-id="' + CSS.escape(id) + '"]');
  if (!tr) return;
  const seen = tr.querySelector(".seen");
  seen.dataset.ms = ms;
  seen.textContent = ago(ms);
  tr.classList.remove("flash");
  void tr.offsetWidth;
  tr.classList.add("flash");
}

// --- feed --------------------------------------------------------------------------------------------------

function feedItem(ms, title, device, cls) {
  const li = el("li", cls || "");
  const what = el("span", "what");
  what.append(el("b", null, title), el("span", "dev", device));
  li.append(el("span", "t", fmtTime(ms)), what);
  return li;
}
function pushFeed(li) {
  const feed = $("feed");
  feed.prepend(li);
  while (feed.children.length > FEED_MAX) feed.lastChild.remove();
  state.feedCount += 1;
  $("feed-count").textContent = String(state.feedCount);
}
function eventTitle(e) {
  let s = t("ev_" + e.type);
  if (e.data && e.data.result === "denied") s += " ✕";
  return s;
}
function eventClass(type) {
  return CRITICAL.has(type) ? "crit" : WARNING.has(type) ? "warn" : "";
}
async function loadEvents() {
  const q = new URLSearchParams({ limit: 50 });
  if (state.region) q.set("region", state.region);
  const data = await api("/events?" + q);
  $("feed").replaceChildren();
  state.feedCount = 0;
  for (const e of data.items.slice().reverse()) pushFeed(feedItem(e.ts_ms, eventTitle(e), e.device_id, eventClass(e.type)));
}

async function loadRejections() {
  const q = new URLSearchParams({ limit: 30 });
  if (state.region) q.set("region", state.region);
  const data = await api("/rejections?" + q);
  $("rej-total").textContent = String(data.total);
  const chips = $("rej-counts");
  chips.replaceChildren();
  for (const [reason, n] of Object.entries(data.counts)) {
    const c = el("span", "chip", t("rs_" + reason));
    c.append(el("b", null, n));
    chips.append(c);
  }
  const ul = $("rej");
  ul.replaceChildren();
  for (const x of data.items) {
    const li = feedItem(x.received_ms, t("rs_" + x.reason), x.device_id, "warn");
    const p = el("span", "payload", x.detail + "  " + x.payload);
    p.title = x.payload;
    li.append(p);
    ul.append(li);
  }
  if (!data.items.length) ul.append(el("li", "empty", t("noData")));
}

// --- alerts (GET /api/v1/alerts, polled; actions POST /api/v1/alerts/{id}/ack|resolve) ----------------------

const SEVERITIES = ["critical", "major", "warning", "info"];
const ALERTS_LIMIT = 200;
const ALERTS_POLL_MS = 5000;

function alertTitle(a) {
  return (state.lang === "en" ? a.title_en || a.title_zh : a.title_zh || a.title_en) || a.rule_id;
}
function regionTrail(path) {
  // Names for the ids of the caller's tree; ids above the caller's scope are not in it and are left out.
  const known = (path || []).filter((id) => state.regionNames[id]).map((id) => state.regionNames[id]);
  return known.length ? known : (path || []).slice(-1);
}
function msOf(iso) {
  return iso ? Date.parse(iso) : null;
}
function showMsg(id, text, kind) {
  const m = $(id);
  m.textContent = text || "";
  m.hidden = !text;
  m.className = "al-msg" + (kind ? " " + kind : "");
}

async function apiSend(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  let r;
  try {
    r = await fetch("/api/v1" + path, { method: "POST", headers, body: JSON.stringify(body) });
  } catch (e) {
    return { status: 0, body: null };
  }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  return { status: r.status, body: data };
}
function detailText(body) {
  const d = body && body.detail;
  if (Array.isArray(d)) return d.map((x) => (x.loc ? x.loc[x.loc.length - 1] + ": " : "") + x.msg).join("; ");
  return d ? String(d) : "";
}
// The API's answer to an action, as one sentence in the page's language.
function actionError(status, body) {
  const detail = detailText(body);
  if (status === 0) return t("errNetwork");
  if (status === 401) return t("errUnauthorized");
  if (status === 403) return t("errForbidden");
  if (status === 404) return t("errNotFound");
  if (status === 409) {
    const m = /already acknowledged by (.*)$/.exec(detail);
    if (m) return t("errAlreadyAcked", { who: m[1] });
    if (/not open/.test(detail)) return t("errNotOpen");
    return t("errConflict", { detail });
  }
  if (status === 422) return t("errInvalid", { detail });
  if (status === 503) return t("errUnavailable");
  return t("errOther", { status, detail });
}

function badge(cls, text, title) {
  const b = el("span", "tag " + cls, text);
  if (title) b.title = title;
  return b;
}
function actionButtons(a) {
  const box = el("span", "al-btns");
  if (!canAct()) return box;  // viewers: no 确认 / 解决 they may not use
  if (a.state === "firing") {
    const ack = el("button", "btn sm", t("ack"));
    ack.type = "button";
    ack.dataset.act = "ack";
    ack.addEventListener("click", (ev) => { ev.stopPropagation(); openAction("ack", a); });
    box.append(ack);
  }
  if (a.state !== "resolved") {
    const res = el("button", "btn sm", t("resolve"));
    res.type = "button";
    res.dataset.act = "resolve";
    res.addEventListener("click", (ev) => { ev.stopPropagation(); openAction("resolve", a); });
    box.append(res);
  }
  return box;
}
function alertTags(a) {
  const tags = [];
  if (a.state === "acknowledged") tags.push(badge("acked", t("st_acknowledged"), t("ackedBy", { who: a.acknowledged_by || "" })));
  if (a.silenced) tags.push(badge("silenced", t("silenced"), silencedWhy(a)));
  if (a.flapping) tags.push(badge("flapping", t("flapping")));
  if (a.count > 1) tags.push(badge("count", t("repeats", { n: a.count })));
  if (a.escalation_level > 0) tags.push(badge("esc", t("escalated", { n: a.escalation_level })));
  if (a.incident_id) {
    const ref = badge("inc-ref", t("incRef", { id: a.incident_id }));
    ref.dataset.incident = a.incident_id;
    ref.addEventListener("click", (ev) => { ev.stopPropagation(); openIncident(a.incident_id); });
    tags.push(ref);
  }
  return tags;
}
function alertRow(a, fresh) {
  const li = el("li", "al sev-" + a.severity + " st-" + a.state + (fresh ? " fresh" : ""));
  li.dataset.id = a.id;
  li.tabIndex = 0;
  const top = el("div", "al-top");
  top.append(el("span", "sev", t("sev_" + a.severity)), el("b", "al-title", alertTitle(a)), ...alertTags(a));
  const meta = el("div", "al-meta");
  const trail = regionTrail(a.region_path);
  const region = el("span", "al-region", trail[trail.length - 1] || a.region_id);
  region.title = trail.join(" / ");
  const age = el("span", "al-age", ago(msOf(a.started_at)));
  age.dataset.ms = msOf(a.started_at) || "";
  age.title = a.started_at || "";
  meta.append(el("span", "dev", a.device_id), region, age, actionButtons(a));
  li.append(top, meta);
  li.addEventListener("click", () => openDrawer(a.id));
  li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") openDrawer(a.id); });
  return li;
}

async function severityCounts(data) {
  const counts = Object.fromEntries(SEVERITIES.map((s) => [s, 0]));
  if (data.total <= data.items.length) {
    for (const a of data.items) counts[a.severity] = (counts[a.severity] || 0) + 1;
    return counts;
  }
  // More open alerts than one page: ask for each severity's total.
  await Promise.all(SEVERITIES.map(async (s) => {
    const q = alertsQuery(1);
    q.set("severity", s);
    counts[s] = (await api("/alerts?" + q)).total;
  }));
  return counts;
}
function alertsQuery(limit) {
  const q = new URLSearchParams({ state: "open", limit });
  if (state.region) q.set("region", state.region);
  return q;
}
function renderBadges(counts) {
  const box = $("al-badges");
  box.replaceChildren();
  for (const s of SEVERITIES) {
    const b = el("span", "sbadge sev-" + s + (counts[s] ? "" : " zero"));
    b.append(el("span", null, t("sev_" + s)), el("b", null, counts[s] || 0));
    b.title = t("sev_" + s);
    box.append(b);
  }
}
async function loadAlerts() {
  const data = await api("/alerts?" + alertsQuery(ALERTS_LIMIT));
  const ul = $("alerts");
  if (!data.items) {
    // 503: the alert engine does not run in this process
    ul.replaceChildren(el("li", "empty", t("alertsOff")));
    $("al-total").textContent = "";
    renderBadges({});
    return;
  }
  const seen = state.alertIds;
  const next = new Set();
  ul.replaceChildren();
  for (const a of data.items) {
    next.add(a.id);
    ul.append(alertRow(a, seen !== null && !seen.has(a.id)));
  }
  state.alertIds = next;
  if (!data.items.length) ul.append(el("li", "empty", t("noAlerts")));
  else if (data.total > data.items.length) ul.append(el("li", "empty", t("alertsMore", { shown: data.items.length, total: data.total })));
  $("al-total").textContent = String(data.total);
  renderBadges(await severityCounts(data));
  if (state.drawerId !== null) loadDrawer(state.drawerId).catch(() => {});
}
function scheduleAlerts(delay) {
  if (state.alertsTimer) return;
  state.alertsTimer = setTimeout(() => {
    state.alertsTimer = null;
    loadAlerts().catch(() => {});
  }, delay);
}

// --- action dialog -----------------------------------------------------------------------------------------

function openAction(kind, a) {
  state.action = { kind, alert: a };
  $("act-title").textContent = t(kind === "ack" ? "ackTitle" : "resolveTitle");
  $("act-alert").textContent = "#" + a.id + "  " + alertTitle(a) + "  ·  " + a.device_id;
  $("act-label").textContent = t(kind === "ack" ? "ackReason" : "resolveReason");
  $("act-ok").textContent = t(kind);
  $("act-reason").value = "";
  showMsg("act-msg", "");
  $("act-dialog").showModal();
  $("act-reason").focus();
}
async function submitAction() {
  const act = state.action;
  if (!act) return;
  const reason = $("act-reason").value.trim();
  if (act.kind === "resolve" && !reason) {
    showMsg("act-msg", t("reasonRequired"), "err");
    return;
  }
  $("act-ok").disabled = true;
  const r = await apiSend("/alerts/" + act.alert.id + "/" + act.kind, { reason });
  $("act-ok").disabled = false;
  if (r.status === 200) {
    $("act-dialog").close();
    state.action = null;
    showMsg("al-msg", t(act.kind === "ack" ? "doneAck" : "doneResolve", { id: act.alert.id }), "ok");
    setTimeout(() => showMsg("al-msg", ""), 4000);
  } else {
    showMsg("act-msg", actionError(r.status, r.body), "err");
    if (r.status === 401) askLogin();
  }
  loadAlerts().catch(() => {});
}

// --- drawer: one alert with its timeline --------------------------------------------------------------------

function kvRow(dl, label, value, cls) {
  if (value === null || value === undefined || value === "") return;
  const dd = el("dd", cls || null, value);
  dl.append(el("dt", null, label), dd);
}
function fmtFull(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString(state.lang === "zh" ? "zh-CN" : "en-GB", { hour12: false, timeZone: TZ });
}
function renderDrawer(a) {
  $("dr-title").textContent = alertTitle(a);
  $("al-drawer").className = "drawer sev-" + a.severity;
  const acts = $("dr-actions");
  acts.replaceChildren(
    el("span", "sev", t("sev_" + a.severity)),
    el("span", "tag st", t("st_" + a.state)),
    ...alertTags(a).filter((b) => !b.classList.contains("acked")),
    actionButtons(a),
    alertExtraButtons(a),  // views.js: comment, assign, silence
  );
  const kv = $("dr-kv");
  kv.replaceChildren();
  kvRow(kv, t("f_id"), "#" + a.id, "mono");
  kvRow(kv, t("f_rule"), a.rule_id, "mono");
  kvRow(kv, t("f_device"), a.device_id, "mono");
  kvRow(kv, t("f_region"), regionTrail(a.region_path).join(" / "));
  kvRow(kv, t("f_started"), fmtFull(a.started_at) + " · " + ago(msOf(a.started_at)));
  kvRow(kv, t("f_updated"), fmtFull(a.updated_at));
  kvRow(kv, t("f_count"), a.count);
  kvRow(kv, t("f_active"), t(a.active ? "yes" : "no"));
  kvRow(kv, t("f_escalation"), a.escalation_level || null);
  kvRow(kv, t("f_assignee"), a.assignee);
  kvRow(kv, t("f_ackBy"), a.acknowledged_by && a.acknowledged_by + " · " + fmtFull(a.acknowledged_at));
  kvRow(kv, t("f_ackReason"), a.ack_reason);
  kvRow(kv, t("f_resolvedBy"), a.resolved_by && a.resolved_by + " · " + fmtFull(a.resolved_at));
  kvRow(kv, t("f_resolveReason"), a.resolve_reason);
  const det = $("dr-detail");
  det.replaceChildren();
  for (const [k, v] of Object.entries(a.detail || {})) kvRow(det, k, typeof v === "string" ? v : JSON.stringify(v), "mono");
  if (!det.children.length) det.append(el("dd", "muted", t("noDetail")));
  const tl = $("dr-timeline");
  tl.replaceChildren();
  const entries = [{ kind: "created", author: "", text: "", at: a.started_at }].concat(a.comments || []);
  for (const c of entries) {
    const li = el("li", "tl-" + c.kind);
    const head = el("div", "tl-head");
    head.append(el("span", "t", fmtFull(c.at)), el("b", null, t("tl_" + c.kind)), el("span", "who", c.author));
    li.append(head);
    if (c.text) li.append(el("div", "tl-text", c.text));
    tl.append(li);
  }
}
async function loadDrawer(id) {
  const a = await api("/alerts/" + encodeURIComponent(id));
  if (state.drawerId !== id) return;
  if (!a.id) {
    showMsg("dr-msg", a.detail === "alerts not running" ? t("alertsOff") : t("errNotFound"), "err");
    return;
  }
  renderDrawer(a);
}
function openDrawer(id) {
  state.drawerId = id;
  showMsg("dr-msg", "");
  $("inc-drawer").hidden = true;  // one drawer at a time
  state.incDrawerId = null;
  $("al-drawer").hidden = false;
  document.querySelectorAll("#alerts li.sel").forEach((n) => n.classList.remove("sel"));
  const li = document.querySelector('#alerts li[data-id="' + CSS.escape(String(id)) + '"]');
  if (li) li.classList.add("sel");
  loadDrawer(id).catch((e) => showMsg("dr-msg", e instanceof Unauthorized ? t("errUnauthorized") : t("errNotFound"), "err"));
}
function closeDrawer() {
  state.drawerId = null;
  $("al-drawer").hidden = true;
  document.querySelectorAll("#alerts li.sel").forEach((n) => n.classList.remove("sel"));
}

// --- live stream (SSE over fetch, so the token goes in a header, not the URL) ---------------------------------

function inRegion(regionId) {
  return !state.region || (state.subtree !== null && state.subtree.has(regionId));
}
function onBatch(msg) {
  for (const e of msg.events || []) {
    if (inRegion(e.region_id)) pushFeed(feedItem(e.ts_ms, eventTitle(e), e.device_id, eventClass(e.type)));
  }
  for (const s of msg.statuses || []) {
    if (inRegion(s.region_id)) {
      pushFeed(feedItem(s.ts_ms, t(s.state === "online" ? "statusOnline" : "statusOffline"), s.device_id,
        s.state === "online" ? "" : "warn"));
    }
  }
  for (const r of msg.readings || []) touchDevice(r.device_id, r.ts_ms);
  if ((msg.events || []).length || (msg.statuses || []).length) scheduleAlerts(1000);  // rules may have fired
  if ((msg.events || []).length || (msg.statuses || []).length || (msg.readings || []).length) scheduleOverview(5000);
  if (msg.dropped) pushFeed(feedItem(Date.now(), t("dropped", { n: msg.dropped }), "", "warn"));
}
function parseFrame(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trim());
  }
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (event === "batch") onBatch(payload);
  if (event === "incident") onIncident(payload);
  if (event === "hello" && !state.me) {
    $("user").textContent = payload.user;
  }
}
async function stream() {
  let delay = 1000;
  for (;;) {
    const ctrl = new AbortController();
    state.streamAbort = ctrl;
    try {
      const r = await fetch("/api/v1/stream", { headers: { Authorization: "Bearer " + state.token }, signal: ctrl.signal });
      if (r.status === 401) { askLogin(); setPill("h-stream", false); return; }
      if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
      setPill("h-stream", true);
      delay = 1000;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          try { parseFrame(frame); } catch (e) { console.warn("bad frame", e); }
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
    }
    setPill("h-stream", false);
    await new Promise((res) => setTimeout(res, delay));
    delay = Math.min(delay * 2, 30000);
  }
}

// --- incidents (GET /api/v1/incidents, live through the stream's "incident" events) ---------------------------

function incTitle(i) {
  return (state.lang === "en" ? i.title_en || i.title_zh : i.title_zh || i.title_en) || i.type;
}
function isAdmin() {
  return can("incidents.confirm_action");
}
function incidentRow(i) {
  const li = el("li", "inc sev-" + i.severity + " ist-" + i.state);
  li.dataset.id = i.id;
  li.tabIndex = 0;
  li.append(el("span", "sev", t("sev_" + i.severity)), el("span", "tag st", t("ist_" + i.state)),
    el("b", "inc-title", incTitle(i)));
  if (i.visibility === "partial") li.append(badge("partial", t("partial")));
  const trail = regionTrail(i.region_path);
  li.append(el("span", "inc-meta", (trail[trail.length - 1] || i.region_id) + " · " + t("f_members") + " "
    + i.member_count + " · " + ago(msOf(i.opened_at)) + " · I" + i.id));
  if (i.assignee) li.append(el("span", "who", t("assignedTo", { who: i.assignee })));
  li.addEventListener("click", () => openIncident(i.id));
  li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") openIncident(i.id); });
  return li;
}
async function loadIncidents() {
  const q = new URLSearchParams({ limit: 50 });
  const st = $("f-inc-state").value;
  if (st) q.set("state", st);
  if (state.region) q.set("region", state.region);
  let data;
  try {
    data = await api("/incidents?" + q);
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    data = { items: [], total: 0 };  // an older server without incidents
  }
  const ul = $("incidents");
  ul.replaceChildren();
  for (const i of data.items || []) ul.append(incidentRow(i));
  if (!(data.items || []).length) ul.append(el("li", "empty", t("noIncidents")));
  $("inc-total").textContent = data.total === undefined ? "" : String(data.total);
}
function onIncident(msg) {
  if (!state.incTimer) {
    state.incTimer = setTimeout(() => { state.incTimer = null; loadIncidents().catch(() => {}); }, 500);
  }
  for (const i of msg.incidents || []) {
    if (state.incDrawerId === i.id) loadIncident(i.id).catch(() => {});
  }
  scheduleAlerts(1000);  // muted members, incident ids of alerts
  scheduleOverview(1000);
}

async function incSend(path, body) {
  const r = await apiSend(path, body || {});
  if (r.status >= 200 && r.status < 300) {
    showMsg("inc-dmsg", t("incDone"), "ok");
  } else {
    showMsg("inc-dmsg", actionError(r.status, r.body), "err");
    if (r.status === 401) askLogin();
  }
  if (state.incDrawerId !== null) loadIncident(state.incDrawerId).catch(() => {});
  loadIncidents().catch(() => {});
  return r;
}
function smallBtn(label, act, fn) {
  const b = el("button", "btn sm", label);
  b.type = "button";
  b.dataset.act = act;
  b.addEventListener("click", (ev) => { ev.stopPropagation(); fn(); });
  return b;
}
function renderIncident(i) {
  const full = i.visibility === "full";
  const open = i.state === "open" || i.state === "investigating";
  const may = can("incidents.act") && full;
  $("inc-title").textContent = incTitle(i) + " · I" + i.id;
  $("inc-drawer").className = "drawer sev-" + i.severity;
  const acts = $("inc-actions");
  acts.replaceChildren(el("span", "sev", t("sev_" + i.severity)), el("span", "tag st", t("ist_" + i.state)));
  if (!full) acts.append(badge("partial", t("readOnly")));
  // each action asks for its note (views.js incidentNote); closing also for the cause
  if (may && i.state === "open") acts.append(smallBtn(t("incAck"), "inc-ack", () => incidentNote(i, "ack")));
  if (may && open) acts.append(smallBtn(t("incResolve"), "inc-resolve", () => incidentNote(i, "resolve")));
  if (may && i.state !== "closed") acts.append(smallBtn(t("incClose"), "inc-close", () => incidentNote(i, "close")));
  if (may) acts.append(smallBtn(t("comment"), "inc-comment", () => commentOn("/incidents/" + i.id + "/comments", "I" + i.id, () => loadIncident(i.id))));
  if (may && i.state !== "closed") acts.append(smallBtn(t("assign"), "inc-assign", () => incidentAssign(i)));  // views.js
  const kv = $("inc-kv");
  kv.replaceChildren();
  kvRow(kv, t("f_id"), "I" + i.id, "mono");
  kvRow(kv, t("f_type"), i.type + " (" + i.pattern_id + ")", "mono");
  kvRow(kv, t("f_scope"), t("lvl_" + i.scope_level) + " · " + (regionTrail(i.region_path).join(" / ") || i.region_id));
  kvRow(kv, t("f_opened"), fmtFull(i.opened_at) + " · " + ago(msOf(i.opened_at)));
  kvRow(kv, t("f_updated"), fmtFull(i.updated_at));
  kvRow(kv, t("f_cause"), i.cause_code && t("cause_" + i.cause_code));
  kvRow(kv, t("f_escalation"), i.escalation_level || null);
  kvRow(kv, t("f_assignee"), i.assignee);
  const tasks = $("inc-tasks");
  tasks.replaceChildren();
  for (const k of i.tasks || []) {
    const li = el("li", "task tst-" + k.state);
    li.dataset.id = k.id;
    li.append(el("b", null, t("dept_" + k.department) === "dept_" + k.department ? k.department : t("dept_" + k.department)),
      el("span", "tag st", t("tst_" + k.state)), el("span", "who", fmtFull(k.deadline)));
    if (k.overdue) li.append(badge("overdue", t("overdue")));
    if (k.acknowledged_by) li.append(el("span", "who", k.acknowledged_by));
    if (k.assignee) li.append(el("span", "who", t("assignedTo", { who: k.assignee })));
    if (may && k.state === "open") li.append(smallBtn(t("taskAck"), "task-ack", () => incSend("/incidents/" + i.id + "/tasks/" + k.id + "/ack")));
    if (may && k.state !== "closed") li.append(smallBtn(t("taskClose"), "task-close", () => incSend("/incidents/" + i.id + "/tasks/" + k.id + "/close")));
    tasks.append(li);
  }
  if (!tasks.children.length) tasks.append(el("li", "muted", t("noTasks")));
  const prop = $("inc-propose");
  prop.replaceChildren();
  if (may && open) {
    for (const name of ["lock", "unlock"]) {
      prop.append(smallBtn(t("propose_" + name), "propose-" + name,
        () => incSend("/incidents/" + i.id + "/actions", { name })));
    }
  }
  const link = $("inc-linkage");
  link.replaceChildren();
  for (const a of i.actions || []) {
    const li = el("li", "action ast-" + a.state);
    li.dataset.id = a.id;
    li.append(el("b", null, t("act_" + a.name)), el("span", "who", a.device_id), el("span", "tag st", t("ast_" + a.state)),
      el("span", "who", a.proposed_by));
    if (a.result_detail) li.append(el("span", "who", a.result_detail));
    if (isAdmin() && full && a.state === "proposed") {
      li.append(smallBtn(t("confirm"), "confirm", () => incSend("/incidents/" + i.id + "/actions/" + a.id + "/confirm")),
        smallBtn(t("decline"), "decline", () => incSend("/incidents/" + i.id + "/actions/" + a.id + "/decline")));
    }
    link.append(li);
  }
  if (!link.children.length) link.append(el("li", "muted", t("noTasks")));
  const mem = $("inc-members");
  mem.replaceChildren();
  for (const m of i.members || []) {
    const li = el("li");
    li.append(el("span", "mono", "#" + m.alert_id), el("span", null, m.rule_id), el("span", "mono", m.device_id),
      el("span", null, state.regionNames[m.region_id] || m.region_id));
    li.addEventListener("click", () => openDrawer(m.alert_id));
    mem.append(li);
  }
  if (i.members_hidden) mem.append(el("li", "muted", t("hiddenMembers", { n: i.members_hidden })));
  const tl = $("inc-timeline");
  tl.replaceChildren();
  for (const e of i.timeline || []) {
    const li = el("li", "tl-" + e.kind);
    const head = el("div", "tl-head");
    head.append(el("span", "t", fmtFull(e.ts)), el("span", "who", e.actor));
    li.append(head, el("div", "tl-text", state.lang === "en" && e.data && e.data.text_en ? e.data.text_en : e.text));
    tl.append(li);
  }
}
async function loadIncident(id) {
  const i = await api("/incidents/" + encodeURIComponent(id));
  if (state.incDrawerId !== id) return;
  if (!i.id) {
    showMsg("inc-dmsg", t("errNotFound"), "err");
    return;
  }
  renderIncident(i);
}
function openIncident(id) {
  state.incDrawerId = Number(id);
  showMsg("inc-dmsg", "");
  $("al-drawer").hidden = true;
  $("inc-drawer").hidden = false;
  document.querySelectorAll("#incidents li.sel").forEach((n) => n.classList.remove("sel"));
  const li = document.querySelector('#incidents li[data-id="' + CSS.escape(String(id)) + '"]');
  if (li) li.classList.add("sel");
  loadIncident(state.incDrawerId).catch((e) => showMsg("inc-dmsg", e instanceof Unauthorized ? t("errUnauthorized") : t("errNotFound"), "err"));
}
function closeIncident() {
  state.incDrawerId = null;
  $("inc-drawer").hidden = true;
  document.querySelectorAll("#incidents li.sel").forEach((n) => n.classList.remove("sel"));
}

// --- region risk (GET /api/v1/risk and /risk/top): the tree coloured by risk, the top risks now ------------------

function riskLevel(score) {
  if (!score) return 0;
  if (score >= 40) return 4;
  if (score >= 15) return 3;
  if (score >= 5) return 2;
  return 1;
}
function walkRisk(nodes, out) {
  for (const n of nodes || []) {
    out[n.id] = n.score;
    walkRisk(n.children, out);
  }
  return out;
}
function applyRisk() {
  document.querySelectorAll("#tree .node").forEach((row) => {
    const score = state.risk[row.dataset.id] || 0;
    for (let k = 1; k <= 4; k += 1) row.classList.remove("risk-" + k);
    const lvl = riskLevel(score);
    if (lvl) row.classList.add("risk-" + lvl);
    row.title = (row.title || "").split(" · ")[0] + (score ? " · " + t("riskScore", { n: score }) : "");
  });
}
async function loadRisk() {
  let tree = null;
  let top = null;
  try {
    [tree, top] = await Promise.all([api("/risk"), api("/risk/top?limit=5&contributors=1")]);
  } catch (e) {
    if (e instanceof Unauthorized) throw e;  // an older server without risk: nothing to colour
  }
  state.risk = tree && tree.regions ? walkRisk(tree.regions, {}) : {};
  applyRisk();
  const ol = $("top-risks");
  ol.replaceChildren();
  for (const r of (top && top.items) || []) {
    if (!r.score) continue;
    const li = el("li", "risk-" + riskLevel(r.score));
    li.dataset.id = r.id;
    li.append(el("span", null, t("lvl_" + r.level) + " " + r.name), el("b", null, r.score));
    li.addEventListener("click", () => { state.region = r.id; state.offset = 0; refreshAll(); });
    ol.append(li);
  }
  if (!ol.children.length) ol.append(el("li", "empty", t("noRisk")));
}

// --- wiring ------------------------------------------------------------------------------------------------

function collectSubtree(nodes, wanted, inside, out) {
  for (const n of nodes) {
    const here = inside || n.id === wanted;
    if (here) out.add(n.id);
    collectSubtree(n.children || [], wanted, here, out);
  }
  return out;
}

async function refreshAll() {
  try {
    if (state.me === null) await loadMe();
    await loadRegions();
    await Promise.all([loadAlerts(), loadDevices(), loadEvents(), loadRejections(), loadHealth(), loadIncidents(),
      loadRisk(), loadOverview()]);
    if (views.current !== "monitor" && views.loaders[views.current]) await views.loaders[views.current]();
  } catch (e) {
    if (!(e instanceof Unauthorized)) console.warn(e);
  }
}

function start() {
  if (state.streamAbort) state.streamAbort.abort();
  state.me = null;  // a new token: ask who it is
  // The drawer opens once the role is known, so it never shows actions the caller may not use.
  refreshAll().then(() => {
    if (state.drawerId !== null) openDrawer(state.drawerId);
    if (state.incDrawerId !== null) openIncident(state.incDrawerId);
  });
  if (state.token) stream();  // without one the login form is open; it starts the stream once logged in
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromHash();
  applyLang();
  $("lang").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem(LANG_KEY, state.lang);
    applyLang();
    state.me = null;
    refreshAll();
  });
  $("token-btn").addEventListener("click", askToken);
  $("logout-btn").addEventListener("click", () => { logout(); });
  $("login-form").addEventListener("submit", (ev) => { ev.preventDefault(); submitLogin(); });
  $("login-token").addEventListener("click", () => { $("login-dialog").close(); askToken(); });
  $("token-form").addEventListener("submit", () => {
    const v = $("token-input").value.trim();
    if (v) {
      localStorage.setItem(TOKEN_KEY, v);
      state.token = v;
      start();
    }
  });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadDevices().catch(() => {}); });
  $("next").addEventListener("click", () => { state.offset += PAGE; loadDevices().catch(() => {}); });
  $("f-online").addEventListener("change", () => { state.offset = 0; loadDevices().catch(() => {}); });
  $("f-type").addEventListener("change", () => { state.offset = 0; loadDevices().catch(() => {}); });
  $("dr-close").addEventListener("click", closeDrawer);
  $("inc-close").addEventListener("click", closeIncident);
  $("f-inc-state").addEventListener("change", () => { loadIncidents().catch(() => {}); });
  setInterval(() => { loadIncidents().catch(() => {}); }, 10000);
  setInterval(() => { loadRisk().catch(() => {}); }, 30000);
  $("act-cancel").addEventListener("click", () => { $("act-dialog").close(); state.action = null; });
  $("act-form").addEventListener("submit", (ev) => { ev.preventDefault(); submitAction(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("act-dialog").open) { closeDrawer(); closeIncident(); }
  });
  setInterval(() => { loadAlerts().catch(() => {}); }, ALERTS_POLL_MS);
  setInterval(loadHealth, 10000);
  setInterval(() => { loadRegions().then(loadDevices).catch(() => {}); }, 15000);
  setInterval(() => { loadRejections().catch(() => {}); }, 15000);
  setInterval(() => {
    document.querySelectorAll("#dev-body .seen, #alerts .al-age").forEach((c) => { if (c.dataset.ms) c.textContent = ago(Number(c.dataset.ms)); });
  }, 5000);
  loadHealth();
  if (!state.token) askLogin();
  start();
});
